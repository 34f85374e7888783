"""Pretrained feature extractors: specs and their registry (spec), the entries (catalogue), weights,
building (build, ensemble), engines, feature extraction (features) and the on-disk cache (cache).

Importing this package registers the catalogue and never imports torch.
"""

from . import catalogue
from .catalogue import DEFAULT_BACKBONE
from .spec import (
    BackboneSpec,
    WeightsSource,
    ensemble_spec,
    get_spec,
    list_backbones,
    list_specs,
    register_backbone,
    unregister_backbone,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "WeightsSource",
    "catalogue",
    "ensemble_spec",
    "get_spec",
    "list_backbones",
    "list_specs",
    "register_backbone",
    "unregister_backbone",
]

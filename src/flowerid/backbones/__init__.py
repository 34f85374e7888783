"""Pretrained feature extractors: specs and their registry (spec), the entries (catalogue), weights,
what each kind of network is made of (anatomy), building (build, ensemble), fronts and tails for tuning
(surgery), ONNX export (onnx), engines, extraction (features: the one route into the cache), the on-disk
cache and its key recipe (cache), and process-level CPU tuning (_platform).

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

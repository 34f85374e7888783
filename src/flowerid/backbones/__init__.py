"""Pretrained feature extractors: the registry of specs, weights, building, engines, feature extraction
and the on-disk feature cache."""

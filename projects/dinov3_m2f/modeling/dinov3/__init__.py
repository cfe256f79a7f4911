"""DINOv3 ViT backbone: model and presets (plain PyTorch). Its weights are read by :mod:`dinov3_m2f.weights`."""
from .presets import (
    DINOV3_PRESETS,
    INTERACTION_INDEXES,
    NORMALIZATION,
    build_dinov3,
    get_interaction_indexes,
    get_normalization,
    kwargs_from_official_config,
)
from .vit import DinoVisionTransformer

__all__ = [
    "DINOV3_PRESETS",
    "INTERACTION_INDEXES",
    "NORMALIZATION",
    "DinoVisionTransformer",
    "build_dinov3",
    "get_interaction_indexes",
    "get_normalization",
    "kwargs_from_official_config",
]

"""DINOv3 ViT backbone: model, presets, checkpoint loading and the frozen-backbone builder (plain PyTorch)."""
from .build import FROZEN_DTYPES, build_frozen_dinov3, resolve_frozen_dtype
from .checkpoint import load_dinov3_weights
from .hf_format import check_hf_config, convert_to_hf_state_dict, hf_config_from_model
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
    "FROZEN_DTYPES",
    "INTERACTION_INDEXES",
    "NORMALIZATION",
    "DinoVisionTransformer",
    "build_dinov3",
    "build_frozen_dinov3",
    "check_hf_config",
    "convert_to_hf_state_dict",
    "get_interaction_indexes",
    "get_normalization",
    "hf_config_from_model",
    "kwargs_from_official_config",
    "load_dinov3_weights",
    "resolve_frozen_dtype",
]

"""DINOv3 ViT backbone: model, presets and checkpoint loading (plain PyTorch)."""
from .checkpoint import (
    convert_hf_state_dict,
    convert_to_hf_state_dict,
    hf_config_from_model,
    load_dinov3_weights,
    read_dinov3_checkpoint,
)
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
    "convert_hf_state_dict",
    "convert_to_hf_state_dict",
    "get_interaction_indexes",
    "get_normalization",
    "hf_config_from_model",
    "kwargs_from_official_config",
    "load_dinov3_weights",
    "read_dinov3_checkpoint",
]

"""Checkpoint files and weight formats (plain PyTorch; nothing here imports detectron2).

- :mod:`.files`: reading checkpoint files safely, writing them atomically and finite.
- :mod:`.dinov3_sources` (reading), :mod:`.dinov3` (loading) and :mod:`.dinov3_hf`: DINOv3 backbone
  weights in the official (Meta) and Hugging Face formats, loaded into :class:`~dinov3_m2f.modeling.dinov3.DinoVisionTransformer`.
- :mod:`.frozen_dinov3`: the frozen backbone built from those weights, in its storage dtype.
- :mod:`.official_head` and :mod:`.mask2former`: segmentation heads converted from the official
  DINOv3 segmentor and from Mask2Former checkpoints.
"""
from .dinov3 import load_dinov3_weights
from .dinov3_hf import check_hf_config, convert_to_hf_state_dict, hf_config_from_model
from .frozen_dinov3 import FROZEN_DTYPES, build_frozen_dinov3, resolve_frozen_dtype
from .official_head import (
    convert_official_head_state_dict,
    convert_official_segmentor_state_dict,
    load_converted_state_dict,
)

__all__ = [
    "FROZEN_DTYPES",
    "build_frozen_dinov3",
    "check_hf_config",
    "convert_official_head_state_dict",
    "convert_official_segmentor_state_dict",
    "convert_to_hf_state_dict",
    "hf_config_from_model",
    "load_converted_state_dict",
    "load_dinov3_weights",
    "resolve_frozen_dtype",
]

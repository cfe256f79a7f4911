"""Models of dinov3_m2f: DINOv3 ViT, ViT-Adapter, Mask2Former head, losses and inference.

Plain PyTorch; nothing here imports detectron2.
"""
from .adapter import DINOv3Adapter
from .criterion import SetCriterion, make_weight_dict
from .dinov3 import (
    DINOV3_PRESETS,
    INTERACTION_INDEXES,
    NORMALIZATION,
    DinoVisionTransformer,
    build_dinov3,
    get_interaction_indexes,
    get_normalization,
)
from .heads import LinearHead, UPerNetHead
from .mask2former_head import Mask2FormerHead, official_dinov3_head_kwargs
from .matcher import HungarianMatcher
from .pixel_decoder import MSDeformAttnPixelDecoder
from .pixel_losses import PixelSegmentationLoss
from .semantic_inference import semantic_probs, slide_inference, tta_inference
from .targets import prepare_targets, semseg_to_targets
from .transformer_decoder import MultiScaleMaskedTransformerDecoder

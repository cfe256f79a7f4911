"""Detectron2 integration layer: the only part of dinov3_m2f that imports detectron2.

Like ``detectron2.data``, importing it registers the standard datasets (see :mod:`.datasets`).
"""
from . import datasets  # noqa: F401  (registers LoveDA and the synthetic set on import)
from .backbone import (
    D2DINOv3Backbone,
    D2DINOv3ViTBackbone,
    dinov3_pyramid_shape,
    dinov3_vit_shape,
    feature_channels,
    total_channels,
)
from .meta_arch import DINOv3Mask2Former, DINOv3PixelSegmentor

"""Detectron2 integration layer: the only part of dinov3_m2f that imports detectron2.

Importing this package registers ``D2DINOv3Backbone`` and ``D2DINOv3ViTBackbone``
(BACKBONE_REGISTRY), ``DINOv3Mask2Former`` and ``DINOv3PixelSegmentor`` (META_ARCH_REGISTRY).
"""
from .backbone import (
    D2DINOv3Backbone,
    D2DINOv3ViTBackbone,
    dinov3_pyramid_shape,
    dinov3_vit_shape,
    feature_channels,
    total_channels,
)
from .meta_arch import DINOv3Mask2Former
from .pixel_meta_arch import DINOv3PixelSegmentor

"""Detectron2 integration layer: the only part of dinov3_m2f that imports detectron2.

Importing this package registers ``D2DINOv3Backbone`` (BACKBONE_REGISTRY) and
``DINOv3Mask2Former`` (META_ARCH_REGISTRY).
"""
from .backbone import D2DINOv3Backbone, dinov3_pyramid_shape
from .meta_arch import DINOv3Mask2Former

"""Detectron2 integration layer: the only part of dinov3_m2f that imports detectron2.

Like ``detectron2.data``, importing it registers the standard datasets (see :mod:`.datasets`).

Import it (or any of its modules) before detectron2 itself: it imports detectron2 without the
import-time deprecation warnings no user can act on (see below).
"""
import warnings

with warnings.catch_warnings():
    # fvcore's losses and detectron2's box coder call torch.jit.script when their modules are
    # imported (detectron2.layers, detectron2.modeling), and torch deprecates it with a
    # FutureWarning that every tool printed twice. Only that message, only during this import.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    import detectron2.engine  # noqa: F401  (imports detectron2.layers and detectron2.modeling)

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

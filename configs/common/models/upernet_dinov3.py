# Frozen DINOv3 ViT-L/16 + ViT-Adapter + UPerNet decode head, per-pixel cross-entropy. Leaf
# configs set num_classes and the preset/weights.
from detectron2.config import LazyCall as L

from dinov3_m2f.d2 import DINOv3PixelSegmentor, dinov3_pyramid_shape
from dinov3_m2f.d2 import feature_channels
from dinov3_m2f.modeling.heads import UPerNetHead
from dinov3_m2f.modeling.pixel_losses import PixelSegmentationLoss

from .dinov3_adapter_backbone import backbone

model = L(DINOv3PixelSegmentor)(
    backbone=backbone,
    # res2..res5, fine to coarse (None = every backbone output in order).
    in_features=None,
    sem_seg_head=L(UPerNetHead)(
        # One entry per pyramid level, each the ViT embed_dim (1024 for ViT-L).
        in_channels=L(feature_channels)(shapes=L(dinov3_pyramid_shape)(channels=1024)),
        num_classes="${..num_classes}",
        channels=512,
        pool_scales=(1, 2, 3, 6),
        # Multi-GPU recipes: "SyncBN" (CUDA only).
        norm="BN",
        dropout=0.1,
    ),
    criterion=L(PixelSegmentationLoss)(
        num_classes="${..num_classes}",
        ignore_value="${..ignore_value}",
        ce_weight=1.0,
        dice_weight=0.0,
    ),
    num_classes=150,
    normalization="lvd1689m",
    ignore_value=255,
    test_mode="whole",
)

# Frozen DINOv3 ViT-L/16 + ViT-Adapter + Mask2Former (original ADE20K head sizes), semantic
# segmentation. Leaf configs set num_classes, the preset/weights and head sizes.
from detectron2.config import LazyCall as L

from dinov3_m2f.d2 import DINOv3Mask2Former, dinov3_pyramid_shape
from dinov3_m2f.modeling.criterion import SetCriterion, make_weight_dict
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead
from dinov3_m2f.modeling.matcher import HungarianMatcher

from .dinov3_adapter_backbone import backbone

model = L(DINOv3Mask2Former)(
    backbone=backbone,
    sem_seg_head=L(Mask2FormerHead)(
        # Channels = ViT embed_dim (1024 for ViT-L).
        input_shape=L(dinov3_pyramid_shape)(channels=1024),
        num_classes="${..num_classes}",
        hidden_dim=256,
        num_queries=100,
        nheads=8,
        enc_dim_feedforward=1024,
        dec_dim_feedforward=2048,
        enc_layers=6,
        dec_layers=9,
        norm="GN",
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points="${..num_points}"
        ),
        # Deep supervision: one auxiliary output per decoder layer.
        weight_dict=L(make_weight_dict)(
            num_aux_layers="${...sem_seg_head.dec_layers}",
            class_weight=2.0,
            mask_weight=5.0,
            dice_weight=5.0,
        ),
        eos_coef=0.1,
        num_points=12544,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    ),
    num_classes=150,
    normalization="lvd1689m",
    ignore_value=255,
    test_mode="whole",
)

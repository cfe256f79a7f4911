# Linear probe: frozen DINOv3 ViT-L/16 (no adapter), BatchNorm + 1x1 conv on the concatenated
# final-norm patch grids of the last `num_layers` blocks (stride 16), per-pixel cross-entropy.
from detectron2.config import LazyCall as L

from dinov3_m2f.d2 import D2DINOv3ViTBackbone, DINOv3PixelSegmentor, dinov3_vit_shape
from dinov3_m2f.d2 import total_channels
from dinov3_m2f.modeling.heads import LinearHead
from dinov3_m2f.modeling.pixel_losses import PixelSegmentationLoss

model = L(DINOv3PixelSegmentor)(
    backbone=L(D2DINOv3ViTBackbone)(
        preset="vitl16",
        weights=None,
        init_seed=None,
        # Official linear heads read the last block (1) or the last four (4).
        num_layers=1,
    ),
    in_features=None,
    sem_seg_head=L(LinearHead)(
        # num_layers x embed_dim channels.
        in_channels=L(total_channels)(
            shapes=L(dinov3_vit_shape)(channels=1024, num_layers="${....backbone.num_layers}")
        ),
        num_classes="${..num_classes}",
        use_batchnorm=True,
        dropout=0.0,
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

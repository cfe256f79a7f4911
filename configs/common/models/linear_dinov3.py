# Linear probe: frozen DINOv3 ViT-L/16 (no adapter), BatchNorm + 1x1 conv on the concatenated
# final-norm patch grids of the last `num_layers` blocks (stride 16), per-pixel cross-entropy.
# The UPerNet model with another backbone and head.
from detectron2.config import LazyCall as L

from dinov3_m2f.d2 import D2DINOv3ViTBackbone, dinov3_vit_shape, total_channels
from dinov3_m2f.modeling.heads import LinearHead

from .upernet_dinov3 import model

model.backbone = L(D2DINOv3ViTBackbone)(
    preset="vitl16",
    weights=None,
    init_seed=None,
    # dtype of the frozen ViT's weights (see dinov3_adapter_backbone.py).
    vit_dtype="float32",
    # Official linear heads read the last block (1) or the last four (4).
    num_layers=1,
)
model.sem_seg_head = L(LinearHead)(
    # num_layers x embed_dim channels.
    in_channels=L(total_channels)(
        shapes=L(dinov3_vit_shape)(channels=1024, num_layers="${....backbone.num_layers}")
    ),
    num_classes="${..num_classes}",
    use_batchnorm=True,
    dropout=0.0,
)

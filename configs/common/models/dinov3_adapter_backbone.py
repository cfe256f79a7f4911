# Frozen DINOv3 ViT-L/16 + trainable ViT-Adapter (official DINOv3 adapter settings), the backbone
# of the Mask2Former and UPerNet models. Leaf configs set the preset and the weights file.
from detectron2.config import LazyCall as L

from dinov3_m2f.d2 import D2DINOv3Backbone

backbone = L(D2DINOv3Backbone)(
    preset="vitl16",
    # Local DINOv3 weights file (.pth / .safetensors / HF folder); None = random init.
    weights=None,
    init_seed=None,
    # "auto": SyncBN when several processes train, else BN.
    norm="auto",
    adapter_kwargs=dict(
        conv_inplane=64,
        n_points=4,
        deform_num_heads=16,
        drop_path_rate=0.3,
        cffn_ratio=0.25,
        deform_ratio=0.5,
    ),
)

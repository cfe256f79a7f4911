# Frozen DINOv3 ViT-L/16 + trainable ViT-Adapter (official DINOv3 adapter settings), the backbone
# of the Mask2Former and UPerNet models. Leaf configs set the preset and the weights file.
from detectron2.config import LazyCall as L

from dinov3_m2f.d2 import D2DINOv3Backbone

backbone = L(D2DINOv3Backbone)(
    preset="vitl16",
    # Local DINOv3 weights file (.pth / .safetensors / HF folder); None = random init.
    weights=None,
    init_seed=None,
    # dtype of the frozen ViT's weights: "float32", "bfloat16" or "float16". bf16 halves their
    # memory (ViT-L 1157 -> 579 MiB, 7B 25.0 -> 12.5 GiB); a ViT with bf16 weights runs under its
    # own bf16 autocast, which gives the features of float32 weights under bf16 autocast.
    vit_dtype="float32",
    # "auto": SyncBN when several processes train, else BN.
    norm="auto",
    adapter_kwargs=dict(
        conv_inplane=64,
        n_points=4,
        deform_num_heads=16,
        drop_path_rate=0.3,
        cffn_ratio=0.25,
        deform_ratio=0.5,
        # Activation checkpointing of the extractors in training: less activation memory (about
        # 20% of a step's peak at ViT-S, docs/benchmarks.md) for a second forward of them.
        with_cp=False,
    ),
)

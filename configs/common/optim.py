import torch

from detectron2.config import LazyCall as L

from dinov3_m2f.d2.solver import get_param_groups

# AdamW over the trainable parameters only (the frozen DINOv3 ViT gets no entry).
# `params.model` is set to the model by tools/train_net.py before instantiation.
AdamW = L(torch.optim.AdamW)(
    params=L(get_param_groups)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        # Norm layers, queries and level embeddings are not decayed. Per-module learning-rate
        # factors: lr_multipliers={module_prefix: factor} (longest prefix wins); none here.
        weight_decay_norm=0.0,
        weight_decay_embed=0.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
)

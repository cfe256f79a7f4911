import torch

from detectron2.config import LazyCall as L

from dinov3_m2f.d2.solver import get_param_groups

# AdamW over the trainable parameters only (the frozen DINOv3 ViT gets no entry).
# `params.model` is set to the model by tools/train_net.py before instantiation.
AdamW = L(torch.optim.AdamW)(
    params=L(get_param_groups)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        # Per-module learning-rate factors, longest prefix wins.
        lr_multipliers={
            "backbone.adapter": 1.0,
            "sem_seg_head.pixel_decoder": 1.0,
            "sem_seg_head.predictor": 1.0,
        },
        # Norm layers, queries and level embeddings are not decayed.
        weight_decay_norm=0.0,
        weight_decay_embed=0.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
)

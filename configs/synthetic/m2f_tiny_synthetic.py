# The embedded default: a tiny DINOv3-architecture ViT (random weights, seeded) + adapter + small
# Mask2Former on the generated synthetic LoveDA-like data (7 classes, 128x128), a few minutes on
# 2 CPU cores:  python tools/train_net.py --config-file configs/synthetic/m2f_tiny_synthetic.py
from ..common.data.synthetic import dataloader
from ..common.models.mask2former_dinov3 import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

# Model: 64-wide 4-block ViT, random init from a fixed seed (trainable-only checkpoints reproduce
# the run), small adapter and head.
model.num_classes = "${dataloader.train.mapper.num_classes}"
model.backbone.update(preset=None, init_seed=0, interaction_indexes=[0, 1, 2, 3],
                      vit_kwargs=dict(embed_dim=64, depth=4, num_heads=2, patch_size=16))
model.backbone.adapter_kwargs.update(conv_inplane=16, deform_num_heads=4, drop_path_rate=0.0)
model.sem_seg_head.input_shape.channels = "${...backbone.vit_kwargs.embed_dim}"
model.sem_seg_head.update(hidden_dim=64, num_queries=16, nheads=4, enc_dim_feedforward=128,
                          dec_dim_feedforward=128, enc_layers=2, dec_layers=3)
model.criterion.num_points = 2048

# Training: CPU-friendly fp32, 400 iterations, 30 of them warmup, a from-scratch head at lr 1e-3.
train.update(output_dir="./output/m2f_tiny_synthetic", device="auto", max_iter=400,
             eval_period=200, log_period=20)
train.amp.enabled = False
train.checkpointer.period = 200
lr_multiplier.warmup_length = 30 / train.max_iter
optimizer.lr = 1e-3

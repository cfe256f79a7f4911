# The embedded default: a tiny DINOv3-architecture ViT (random weights, seeded) + adapter + small
# Mask2Former on the generated synthetic LoveDA-like data (7 classes, 128x128), a few minutes on
# 2 CPU cores:  python tools/train_net.py --config-file configs/synthetic/m2f_tiny_synthetic.py
from ..common.data.synthetic import dataloader
from ..common.models.mask2former_dinov3 import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train
from dinov3_m2f.modeling import segmentor

# Model: the tiny model (64-wide 4-block ViT, small adapter and head; sizes in
# dinov3_m2f/modeling/segmentor.py), random init from a fixed seed (trainable-only checkpoints
# reproduce the run).
model.num_classes = "${dataloader.train.mapper.num_classes}"
model.backbone.update(preset=None, init_seed=0, interaction_indexes=list(segmentor.TINY_INTERACTION_INDEXES),
                      vit_kwargs=dict(segmentor.TINY_VIT))
model.backbone.adapter_kwargs.update(segmentor.TINY_ADAPTER)
model.sem_seg_head.input_shape.channels = "${...backbone.vit_kwargs.embed_dim}"
model.sem_seg_head.update(segmentor.TINY_HEAD)
model.criterion.num_points = 2048

# Training: CPU-friendly fp32, 400 iterations, 30 of them warmup, a from-scratch head at lr 1e-3.
train.update(output_dir="./output/m2f_tiny_synthetic", device="auto", max_iter=400,
             eval_period=200, log_period=20)
train.amp.enabled = False
train.checkpointer.period = 200
lr_multiplier.warmup_length = 30 / train.max_iter
optimizer.lr = 1e-3

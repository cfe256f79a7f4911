# The embedded default: a tiny DINOv3-architecture ViT (random weights, seeded) + adapter +
# small Mask2Former on the generated synthetic LoveDA-like data (7 classes, 128x128).
# Trains on 2 CPU cores in a few minutes:
#   python tools/train_net.py --config-file configs/synthetic/m2f_tiny_synthetic.py
from ..common.data.synthetic import dataloader
from ..common.models.mask2former_dinov3 import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

# Model: ViT-architecture backbone, 64 wide, 4 blocks, random init from a fixed seed so that
# trainable-only checkpoints reproduce the run.
model.num_classes = "${dataloader.train.mapper.num_classes}"
model.backbone.preset = None
model.backbone.vit_kwargs = dict(embed_dim=64, depth=4, num_heads=2, patch_size=16)
model.backbone.interaction_indexes = [0, 1, 2, 3]
model.backbone.init_seed = 0
model.backbone.adapter_kwargs = dict(
    conv_inplane=16, n_points=4, deform_num_heads=4, drop_path_rate=0.0
)
model.sem_seg_head.input_shape.channels = "${...backbone.vit_kwargs.embed_dim}"
model.sem_seg_head.hidden_dim = 64
model.sem_seg_head.num_queries = 16
model.sem_seg_head.nheads = 4
model.sem_seg_head.enc_dim_feedforward = 128
model.sem_seg_head.dec_dim_feedforward = 128
model.sem_seg_head.enc_layers = 2
model.sem_seg_head.dec_layers = 3
model.criterion.num_points = 2048

# Training: CPU-friendly, fp32.
train.output_dir = "./output/m2f_tiny_synthetic"
train.device = "auto"
train.amp.enabled = False
train.max_iter = 400
train.eval_period = 200
train.checkpointer.period = 200
train.log_period = 20

# Schedule: 30 warmup iterations, then poly(0.9).
lr_multiplier.warmup_length = 30 / train.max_iter

# Optimizer: a from-scratch tiny head learns faster than the 1e-4 of the full-size recipes.
optimizer.lr = 1e-3

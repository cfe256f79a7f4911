# Linear-probe counterpart of m2f_tiny_synthetic.py: the same tiny seeded ViT (no adapter), a
# BatchNorm + 1x1 conv head on its last block, the same data, schedule and iteration budget.
#   python tools/train_net.py --config-file configs/synthetic/linear_tiny_synthetic.py
from ..common.data.synthetic import dataloader
from ..common.models.linear_dinov3 import model
from ..common.optim import AdamW as optimizer
from .m2f_tiny_synthetic import lr_multiplier, train
from .m2f_tiny_synthetic import model as m2f_model

model.num_classes = "${dataloader.train.mapper.num_classes}"
model.backbone.preset = None
model.backbone.vit_kwargs = m2f_model.backbone.vit_kwargs
model.backbone.init_seed = m2f_model.backbone.init_seed
model.sem_seg_head.in_channels.shapes.channels = "${....backbone.vit_kwargs.embed_dim}"

# Optimizer: only the head is trainable.
optimizer.lr = 1e-3

train.output_dir = "./output/linear_tiny_synthetic"

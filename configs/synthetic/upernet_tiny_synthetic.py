# UPerNet counterpart of m2f_tiny_synthetic.py: the same tiny seeded ViT + adapter, a 64-wide
# UPerNet head, the same data, schedule and iteration budget.
#   python tools/train_net.py --config-file configs/synthetic/upernet_tiny_synthetic.py
from ..common.data.synthetic import dataloader
from ..common.models.upernet_dinov3 import model
from ..common.optim import AdamW as optimizer
from .m2f_tiny_synthetic import lr_multiplier, train
from .m2f_tiny_synthetic import model as m2f_model

# Model: the M2F default's backbone block, unchanged.
model.num_classes = "${dataloader.train.mapper.num_classes}"
model.backbone = m2f_model.backbone
model.sem_seg_head.in_channels.shapes.channels = "${....backbone.vit_kwargs.embed_dim}"
model.sem_seg_head.channels = 64

optimizer.lr = 1e-3

train.output_dir = "./output/upernet_tiny_synthetic"

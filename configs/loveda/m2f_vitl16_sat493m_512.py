# LoveDA (7 classes): frozen DINOv3 ViT-L/16 (SAT-493M weights) + adapter + Mask2Former, 512 crops.
# Download the DINOv3 ViT-L/16 SAT-493M weights and point model.backbone.weights at the file.
from ..common.data.loveda import dataloader
from ..common.models.mask2former_dinov3 import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

# Model: ViT-L/16 (the base preset); optimizer: the base AdamW (lr 1e-4, wd 0.05).
model.num_classes = "${dataloader.train.mapper.num_classes}"
model.normalization = "sat493m"
model.backbone.weights = "checkpoints/dinov3_vitl16_pretrain_sat493m.pth"
# bf16 frozen weights: half the memory, the same features under train.amp's bf16 autocast.
model.backbone.vit_dtype = "bfloat16"
# 1024x1024 val images: 512 windows, 2/3 overlap -> 3x3 windows per image.
model.test_mode = "slide"
model.slide_crop_size = (512, 512)
model.slide_stride = (341, 341)
# All 9 windows of a tile in one forward pass (6.7x one window's activation memory at ViT-S,
# docs/benchmarks.md: still 2.3x a whole-tile forward).
model.slide_batch = 9

# Schedule: 80k iterations x 16 images (2503 train images -> ~510 epochs), as the published
# frozen-backbone LoveDA recipes; 1500 warmup iterations, then poly(0.9).
train.max_iter = 80000
lr_multiplier.warmup_length = 1500 / train.max_iter
train.eval_period = 8000
train.checkpointer.period = 8000
train.output_dir = "./output/loveda_m2f_vitl16_sat493m_512"

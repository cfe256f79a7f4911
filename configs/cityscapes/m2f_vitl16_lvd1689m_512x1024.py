# Cityscapes fine (19 classes): frozen DINOv3 ViT-L/16 (LVD-1689M) + adapter + Mask2Former,
# 512x1024 crops.
from ..common.data.cityscapes import dataloader
from ..common.models.mask2former_dinov3 import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

# Model: ViT-L/16 (the base preset); optimizer: the base AdamW (lr 1e-4, wd 0.05).
model.num_classes = "${dataloader.train.mapper.num_classes}"
model.backbone.weights = "checkpoints/dinov3_vitl16_pretrain_lvd1689m.pth"
# bf16 frozen weights: half the memory, the same features under train.amp's bf16 autocast.
model.backbone.vit_dtype = "bfloat16"
# 1024x2048 val images: 512x1024 windows, 2/3 overlap -> 3x3 windows per image.
model.test_mode = "slide"
model.slide_crop_size = (512, 1024)
model.slide_stride = (341, 683)
# A row of 3 windows per forward pass: 3x one window's activation memory (2.6x at ViT-S in
# docs/benchmarks.md; all 9 at once: 6.9x).
model.slide_batch = 3

# Schedule: Mask2Former Cityscapes, 90k iterations x 16 images, 1500 warmup, poly(0.9).
train.max_iter = 90000
lr_multiplier.warmup_length = 1500 / train.max_iter
train.eval_period = 9000
train.checkpointer.period = 9000
train.output_dir = "./output/cityscapes_m2f_vitl16_lvd1689m_512x1024"

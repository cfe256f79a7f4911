# Cityscapes fine (19 classes): frozen DINOv3 ViT-L/16 (LVD-1689M) + adapter + Mask2Former,
# 512x1024 crops.
from ..common.data.cityscapes import dataloader
from ..common.m2f_vitl16_base import lr_multiplier, model, optimizer, train

model.backbone.weights = "checkpoints/dinov3_vitl16_pretrain_lvd1689m.pth"
# 1024x2048 val images: 512x1024 windows, 2/3 overlap -> 3x3 windows per image; a row of 3 per
# forward pass: 3x one window's activation memory (2.6x at ViT-S in docs/benchmarks.md; all 9
# at once: 6.9x).
model.slide_crop_size = (512, 1024)
model.slide_stride = (341, 683)
model.slide_batch = 3
# Mask2Former Cityscapes: 90k iterations x 16 images.
train.max_iter = 90000
train.output_dir = "./output/cityscapes_m2f_vitl16_lvd1689m_512x1024"

# LoveDA (7 classes): frozen DINOv3 ViT-L/16 (SAT-493M weights) + adapter + Mask2Former, 512 crops.
# Download the DINOv3 ViT-L/16 SAT-493M weights and point model.backbone.weights at the file.
from ..common.data.loveda import dataloader
from ..common.m2f_vitl16_base import lr_multiplier, model, optimizer, train

# Satellite weights, with their own mean and std.
model.backbone.weights = "checkpoints/dinov3_vitl16_pretrain_sat493m.pth"
model.normalization = "sat493m"
# 1024x1024 val images: the base's 512 windows with 2/3 overlap -> 3x3 windows per image, all 9
# in one forward pass (6.7x one window's activation memory at ViT-S, docs/benchmarks.md: still
# 2.3x a whole-tile forward).
model.slide_batch = 9
# 80k iterations x 16 images (2503 train images -> ~510 epochs), as the published
# frozen-backbone LoveDA recipes.
train.max_iter = 80000
train.output_dir = "./output/loveda_m2f_vitl16_sat493m_512"

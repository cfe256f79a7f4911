# ADE20K-150: frozen DINOv3 ViT-L/16 (LVD-1689M weights) + adapter + Mask2Former, 512 crops.
# Download the DINOv3 ViT-L/16 LVD-1689M weights and point model.backbone.weights at the file.
from ..common.data.ade20k import dataloader
from ..common.m2f_vitl16_base import lr_multiplier, model, optimizer, train

model.backbone.weights = "checkpoints/dinov3_vitl16_pretrain_lvd1689m.pth"
# Val images are resized to short edge 512 by the test loader; 512 windows, 2/3 overlap. Most
# (4:3) need two windows: one forward pass for both.
model.slide_crop_size = (512, 512)
model.slide_stride = (341, 341)
model.slide_batch = 2
# Mask2Former ADE20K: 160k iterations x 16 images.
train.max_iter = 160000
train.output_dir = "./output/ade20k_m2f_vitl16_lvd1689m_512"

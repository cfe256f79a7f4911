# ADE20K-150: frozen DINOv3 ViT-L/16 (LVD-1689M weights) + adapter + Mask2Former, 512 crops.
# Download the DINOv3 ViT-L/16 LVD-1689M weights and point model.backbone.weights at the file.
from ..common.data.ade20k import dataloader
from ..common.models.mask2former_dinov3 import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

# Model: ViT-L/16 (the base preset); optimizer: the base AdamW (lr 1e-4, wd 0.05).
model.num_classes = "${dataloader.train.mapper.num_classes}"
model.backbone.weights = "checkpoints/dinov3_vitl16_pretrain_lvd1689m.pth"
# bf16 frozen weights: half the memory, the same features under train.amp's bf16 autocast.
model.backbone.vit_dtype = "bfloat16"
# Val images are resized to short edge 512 by the test loader; 512 windows, 2/3 overlap.
model.test_mode = "slide"
model.slide_crop_size = (512, 512)
model.slide_stride = (341, 341)
# Most val images (4:3, 512 short edge) need two windows: one forward pass for both.
model.slide_batch = 2

# Schedule: Mask2Former ADE20K, 160k iterations x 16 images, 1500 warmup, poly(0.9).
train.max_iter = 160000
lr_multiplier.warmup_length = 1500 / train.max_iter
train.eval_period = 16000
train.checkpointer.period = 16000
train.output_dir = "./output/ade20k_m2f_vitl16_lvd1689m_512"

# LoveDA with 720 crops (the base recipe otherwise). 720 is not a multiple of 32: the model
# pads every crop to 736 (ignored pixels), so the adapter sees 46x46 ViT tokens.
from .m2f_vitl16_sat493m_512 import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.mapper.augmentations[1].crop_size = (720, 720)
model.slide_crop_size = (720, 720)
# 1024 = 720 + 304: two windows per side.
model.slide_stride = (480, 480)
train.output_dir = "./output/loveda_m2f_vitl16_sat493m_720"

# Your own data (two folders of images + single-channel masks): frozen DINOv3 ViT-L/16 (LVD-1689M)
# + adapter + Mask2Former, 512 crops. Paths, class names and num_classes come from
# configs/common/data/folder.py; override them on the command line (see its docstring), e.g.
#   python tools/train_net.py --config-file configs/folder/m2f_vitl16_lvd1689m_512.py \
#     dataloader.train.dataset.names.image_dir=/data/roofs/train/images ...
from ..ade20k.m2f_vitl16_lvd1689m_512 import lr_multiplier, model, optimizer, train
from ..common.data.folder import dataloader

# Schedule: 40k iterations x 16 images, 1500 warmup, poly(0.9); a smaller dataset than ADE20K.
train.max_iter = 40000
lr_multiplier.warmup_length = 1500 / train.max_iter
train.eval_period = 4000
train.checkpointer.period = 4000
train.output_dir = "./output/folder_m2f_vitl16_lvd1689m_512"

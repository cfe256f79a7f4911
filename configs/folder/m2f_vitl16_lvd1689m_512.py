# Your own data (two folders of images + single-channel masks): frozen DINOv3 ViT-L/16 (LVD-1689M)
# + adapter + Mask2Former, 512 crops. Paths, class names and num_classes come from
# configs/common/data/folder.py; override them on the command line (see its docstring), e.g.
#   python tools/train_net.py --config-file configs/folder/m2f_vitl16_lvd1689m_512.py \
#     dataloader.train.dataset.names.image_dir=/data/roofs/train/images ...
from ..common.data.folder import dataloader
from ..common.m2f_vitl16_base import lr_multiplier, model, optimizer, train

model.backbone.weights = "checkpoints/dinov3_vitl16_pretrain_lvd1689m.pth"
# Val images are resized to short edge 512 by the test loader; 512 windows, 2/3 overlap, two
# per forward pass (a 4:3 image needs two).
model.slide_crop_size = (512, 512)
model.slide_stride = (341, 341)
model.slide_batch = 2
# 40k iterations x 16 images: a smaller dataset than ADE20K.
train.max_iter = 40000
train.output_dir = "./output/folder_m2f_vitl16_lvd1689m_512"

# ADE20K evaluation of the released DINOv3 ViT-7B/16 + Mask2Former segmentor (--eval-only):
#   python tools/train_net.py --config-file configs/ade20k/m2f_vit7b16_official_head_eval.py \
#       --eval-only model.backbone.weights=<7B backbone .pth> train.init_checkpoint=<head .pth>
# train.init_checkpoint is the released adapter+head converted to our key names:
#   python tools/convert_weights.py dinov3_vit7b16_ade20k_m2f_head.pth \
#       checkpoints/dinov3_vit7b16_ade20k_m2f_converted.pth
from .m2f_vitl16_lvd1689m_512 import dataloader, lr_multiplier, model, optimizer, train

# Backbone: ViT-7B/16, 4096 wide, 40 blocks.
model.backbone.preset = "vit7b16"
model.backbone.weights = "checkpoints/dinov3_vit7b16_pretrain_lvd1689m.pth"
model.sem_seg_head.input_shape.channels = 4096

# Head: the official shape (hidden 2048, 16 heads, FFN 4096, 6 post-norm encoder layers,
# 9 decoder layers, 100 queries, GroupNorm, bilinear FPN, fp32 pixel decoder).
model.sem_seg_head.hidden_dim = 2048
model.sem_seg_head.num_queries = 100
model.sem_seg_head.nheads = 16
model.sem_seg_head.enc_dim_feedforward = 4096
model.sem_seg_head.dec_dim_feedforward = 4096
model.sem_seg_head.enc_layers = 6
model.sem_seg_head.dec_layers = 9
model.sem_seg_head.pre_norm = False
model.sem_seg_head.upsample_mode = "bilinear"
model.sem_seg_head.pixel_decoder_fp32 = True

# Official evaluation: 896 short edge, 896 windows every 596 px, 5 scales + flip, averaged.
dataloader.test.mapper.augmentations[0].short_edge_length = 896
dataloader.test.mapper.augmentations[0].max_size = 3584
model.test_mode = "tta"
model.slide_crop_size = (896, 896)
model.slide_stride = (596, 596)
model.tta_scales = (0.9, 0.95, 1.0, 1.05, 1.1)
model.tta_flip = True

# Evaluation only: bf16 autocast, one image per GPU.
train.amp.enabled = True
train.amp.dtype = "bfloat16"
train.init_checkpoint = "checkpoints/dinov3_vit7b16_ade20k_m2f_converted.pth"
train.output_dir = "./output/ade20k_m2f_vit7b16_official_head_eval"

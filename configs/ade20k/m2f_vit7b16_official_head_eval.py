# ADE20K evaluation of the released DINOv3 ViT-7B/16 + Mask2Former segmentor; its adapter+head
# converted by tools/convert_weights.py (README: "The released DINOv3 segmentation head"):
#   --eval-only model.backbone.weights=<7B backbone .pth> train.init_checkpoint=<converted head>
from detectron2.config import LazyCall as L

from dinov3_m2f.d2 import dinov3_pyramid_shape
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead, official_dinov3_head_kwargs

from .m2f_vitl16_lvd1689m_512 import dataloader, lr_multiplier, model, optimizer, train

# Backbone: ViT-7B/16 (4096 wide); head: the official shape (hidden 2048, see the function).
model.backbone.preset = "vit7b16"
model.backbone.weights = "checkpoints/dinov3_vit7b16_pretrain_lvd1689m.pth"
# bf16 frozen weights (12.5 GiB instead of 25.0): 7B inference fits in 40 GB.
model.backbone.vit_dtype = "bfloat16"
model.sem_seg_head = L(Mask2FormerHead)(
    input_shape=L(dinov3_pyramid_shape)(channels=4096),
    **official_dinov3_head_kwargs(num_classes="${..num_classes}"),
)

# Official evaluation: 896 short edge, 896 windows every 596 px, 5 scales + flip, averaged.
dataloader.test.mapper.augmentations[0].update(short_edge_length=896, max_size=3584)
# One window per forward pass: the 40 GB memory target is measured for one 896 window.
model.update(test_mode="tta", slide_crop_size=(896, 896), slide_stride=(596, 596), slide_batch=1,
             tta_scales=(0.9, 0.95, 1.0, 1.05, 1.1), tta_flip=True)

# Evaluation only: bf16 autocast, one image per GPU.
train.amp.update(enabled=True, dtype="bfloat16")
train.init_checkpoint = "checkpoints/dinov3_vit7b16_ade20k_m2f_converted.pth"
train.output_dir = "./output/ade20k_m2f_vit7b16_official_head_eval"

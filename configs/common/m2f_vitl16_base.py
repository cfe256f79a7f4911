# The base of the ViT-L/16 Mask2Former recipes (ADE20K, Cityscapes, LoveDA, your own folders):
# frozen DINOv3 ViT-L/16 + adapter + Mask2Former, AdamW (lr 1e-4, wd 0.05), warmup then poly(0.9),
# bf16 autocast. A leaf imports model, optimizer, lr_multiplier and train from here and its
# dataloader from common/data/, then states only the weights, the evaluation window, max_iter
# (and its output_dir); what follows from max_iter is interpolated, so it also follows a
# train.max_iter=... override on the command line.
import dinov3_m2f.config_resolvers  # noqa: F401  (${period:...}, ${warmup_fraction:...})

from .models.mask2former_dinov3 import model
from .optim import AdamW as optimizer
from .schedule import lr_multiplier
from .train import train

# Model: as many classes as the leaf's dataset.
model.num_classes = "${dataloader.train.mapper.num_classes}"
# bf16 frozen weights: half the memory, the same features under train.amp's bf16 autocast.
model.backbone.vit_dtype = "bfloat16"
# Sliding-window evaluation; the leaf sets the window for its image size (default: 512 windows
# with 2/3 overlap, one per forward pass).
model.test_mode = "slide"
model.slide_crop_size = (512, 512)
model.slide_stride = (341, 341)
model.slide_batch = 1

# Schedule: 16 images per step (common/data), 1500 warmup iterations (a tenth of a shorter run),
# then poly(0.9) to 0; 10 evaluations and checkpoints per run (160k iterations: every 16k).
train.max_iter = 160000
lr_multiplier.warmup_length = "${warmup_fraction:1500,${train.max_iter}}"
train.eval_period = "${period:${.max_iter},10}"
train.checkpointer.period = "${..eval_period}"

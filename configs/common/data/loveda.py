"""LoveDA (1024x1024 aerial, 7 classes) with the raw masks: 0 = no-data -> 255, 1..7 -> 0..6.

Expects ``$DETECTRON2_DATASETS/LoveDA/{Train,Val,Test}/{Urban,Rural}/{images_png,masks_png}``.
``loveda_sem_seg_test`` has no masks (predictions go to the LoveDA server), so the evaluator
uses ``loveda_sem_seg_val``.
"""
from dinov3_m2f.data.loveda import LOVEDA_LABEL_MAP

from .sem_seg import dataloader

dataloader.train.dataset.names = "loveda_sem_seg_train"
dataloader.train.mapper.num_classes = 7
dataloader.train.mapper.label_map = LOVEDA_LABEL_MAP
# short edge 1024 (the image size) * [0.5, 0.6, ..., 2.0] = 512 ... 2048
dataloader.train.mapper.augmentations[0].short_edge_length.base = 1024
dataloader.train.mapper.augmentations[0].max_size = 4096
dataloader.test.dataset.names = "loveda_sem_seg_val"
# native 1024x1024; sliding-window inference is the model's job
dataloader.test.mapper.augmentations = []

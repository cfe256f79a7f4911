"""Cityscapes fine (19 train ids), crop 512x1024; needs ``*_gtFine_labelTrainIds.png``.

Evaluated with ``SemSegEvaluator`` semantics (not detectron2's CityscapesSemSegEvaluator), so
cityscapesscripts is not needed.
"""
from .sem_seg import dataloader

dataloader.train.dataset.names = "cityscapes_fine_sem_seg_train"
dataloader.train.mapper.num_classes = 19
# short edge 1024 (the image height) * [0.5, 0.6, ..., 2.0] = 512 ... 2048
dataloader.train.mapper.augmentations[0].short_edge_length.base = 1024
dataloader.train.mapper.augmentations[0].max_size = 4096
dataloader.train.mapper.augmentations[1].crop_size = (512, 1024)  # (H, W)
dataloader.test.dataset.names = "cityscapes_fine_sem_seg_val"
# native 1024x2048; sliding-window inference is the model's job
dataloader.test.mapper.augmentations = []

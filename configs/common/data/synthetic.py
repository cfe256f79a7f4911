"""Synthetic LoveDA-like data (7 classes, 128x128, generated on first use): the CPU smoke test."""
from .sem_seg import dataloader

dataloader.train.dataset.names = "synthetic_sem_seg_train"
dataloader.train.mapper.num_classes = 7
# short edge 128 (the generated image size) * [0.75, 0.875, ..., 1.5] = 96 ... 192
dataloader.train.mapper.augmentations[0].short_edge_length.update(
    base=128, min_ratio=0.75, max_ratio=1.5, step=0.125
)
dataloader.train.mapper.augmentations[0].max_size = 512
dataloader.train.mapper.augmentations[1].crop_size = (128, 128)
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 2
dataloader.test.dataset.names = "synthetic_sem_seg_val"
dataloader.test.mapper.augmentations = []  # evaluate at the native 128x128
dataloader.test.num_workers = 2

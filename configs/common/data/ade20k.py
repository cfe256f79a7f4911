"""ADE20K-150 in detectron2's layout (``ADEChallengeData2016/annotations_detectron2``), crop 512."""
from .sem_seg import dataloader

dataloader.train.dataset.names = "ade20k_sem_seg_train"
dataloader.train.mapper.num_classes = 150
dataloader.test.dataset.names = "ade20k_sem_seg_val"

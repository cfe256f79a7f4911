"""Your own data from two folders: images ``*.jpg|*.png`` and masks ``*.png`` with the same stem.

Masks are single-channel PNGs of class ids ``0..len(class_names)-1``; ``ignore_value`` marks
pixels to ignore. Edit the paths, ``class_names`` and ``num_classes`` below, or override them on
the command line, e.g.::

    dataloader.train.dataset.names.image_dir=/data/roofs/train/images \
    dataloader.train.dataset.names.mask_dir=/data/roofs/train/masks \
    "dataloader.train.dataset.names.class_names=[background,roof]" \
    dataloader.train.mapper.num_classes=2

The val split repeats the class list and ignore value by interpolation. Registration happens when
the loaders/evaluator are built (``register_folder_dataset`` returns the dataset name).
"""
from detectron2.config import LazyCall as L

from dinov3_m2f.d2.datasets import register_folder_dataset

from .sem_seg import dataloader

dataloader.train.dataset.names = L(register_folder_dataset)(
    name="folder_sem_seg_train",
    image_dir="datasets/my_dataset/train/images",
    mask_dir="datasets/my_dataset/train/masks",
    class_names=["background", "foreground"],
    ignore_value=255,
)
dataloader.train.mapper.num_classes = 2  # = len(class_names) above
dataloader.train.mapper.ignore_label = "${..dataset.names.ignore_value}"
dataloader.test.dataset.names = L(register_folder_dataset)(
    name="folder_sem_seg_val",
    image_dir="datasets/my_dataset/val/images",
    mask_dir="datasets/my_dataset/val/masks",
    class_names="${....train.dataset.names.class_names}",
    ignore_value="${....train.dataset.names.ignore_value}",
)

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
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader
from omegaconf import OmegaConf

from dinov3_m2f.d2.datasets import (
    SemSegGroundTruthLoader,
    get_dataset_dicts,
    register_folder_dataset,
)
from dinov3_m2f.d2.evaluation import SkippingSemSegEvaluator, build_sem_seg_test_loader
from dinov3_m2f.d2.mapper import SemSegDatasetMapper
from dinov3_m2f.d2.transforms import build_sem_seg_train_augmentations, scaled_lengths

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_dataset_dicts)(
        names=L(register_folder_dataset)(
            name="folder_sem_seg_train",
            image_dir="datasets/my_dataset/train/images",
            mask_dir="datasets/my_dataset/train/masks",
            class_names=["background", "foreground"],
            ignore_value=255,
        ),
    ),
    mapper=L(SemSegDatasetMapper)(
        is_train=True,
        augmentations=L(build_sem_seg_train_augmentations)(
            crop_size=512,
            # short edge 512 * [0.5, 0.6, ..., 2.0] = 256 ... 1024
            short_edge_lengths=L(scaled_lengths)(
                base="${..crop_size}", min_ratio=0.5, max_ratio=2.0
            ),
            max_size=2048,
            ignore_label="${..ignore_label}",
        ),
        image_format="RGB",
        ignore_label="${..dataset.names.ignore_value}",
        num_classes=2,  # = len(class_names) above
        pad_size="${.augmentations.crop_size}",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_sem_seg_test_loader)(
    dataset=L(get_dataset_dicts)(
        names=L(register_folder_dataset)(
            name="folder_sem_seg_val",
            image_dir="datasets/my_dataset/val/images",
            mask_dir="datasets/my_dataset/val/masks",
            class_names="${....train.dataset.names.class_names}",
            ignore_value="${....train.dataset.names.ignore_value}",
        ),
        filter_empty=False,
    ),
    mapper=L(SemSegDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=512, max_size=2048)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(SkippingSemSegEvaluator)(
    dataset_name="${..test.dataset.names}",  # registers the val folder and gives its name
    sem_seg_loading_fn=L(SemSegGroundTruthLoader)(dataset_name="${..dataset_name}"),
)

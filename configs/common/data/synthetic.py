"""Synthetic LoveDA-like data (7 classes, 128x128, generated on first use): the CPU smoke test."""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader
from omegaconf import OmegaConf

from dinov3_m2f.d2.datasets import SemSegGroundTruthLoader, get_dataset_dicts
from dinov3_m2f.d2.evaluation import SkippingSemSegEvaluator, build_sem_seg_test_loader
from dinov3_m2f.d2.mapper import SemSegDatasetMapper
from dinov3_m2f.d2.transforms import build_sem_seg_train_augmentations, scaled_lengths

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_dataset_dicts)(names="synthetic_sem_seg_train"),
    mapper=L(SemSegDatasetMapper)(
        is_train=True,
        augmentations=L(build_sem_seg_train_augmentations)(
            crop_size=128,  # = the generated image size
            # short edge 128 * [0.75, 0.875, ..., 1.5] = 96 ... 192
            short_edge_lengths=L(scaled_lengths)(
                base="${..crop_size}", min_ratio=0.75, max_ratio=1.5, step=0.125
            ),
            max_size=512,
            ignore_label="${..ignore_label}",
        ),
        image_format="RGB",
        ignore_label=255,
        num_classes=7,
        pad_size="${.augmentations.crop_size}",
    ),
    total_batch_size=8,
    num_workers=2,
)

dataloader.test = L(build_sem_seg_test_loader)(
    dataset=L(get_dataset_dicts)(names="synthetic_sem_seg_val", filter_empty=False),
    mapper=L(SemSegDatasetMapper)(
        is_train=False,
        augmentations=[],  # evaluate at the native 128x128
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=2,
)

dataloader.evaluator = L(SkippingSemSegEvaluator)(
    dataset_name="${..test.dataset.names}",
    sem_seg_loading_fn=L(SemSegGroundTruthLoader)(dataset_name="${..dataset_name}"),
)

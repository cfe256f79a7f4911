"""LoveDA (1024x1024 aerial, 7 classes) with the raw masks: 0 = no-data -> 255, 1..7 -> 0..6.

Expects ``$DETECTRON2_DATASETS/LoveDA/{Train,Val,Test}/{Urban,Rural}/{images_png,masks_png}``.
``loveda_sem_seg_test`` has no masks (predictions go to the LoveDA server), so the evaluator
uses ``loveda_sem_seg_val``.
"""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader
from omegaconf import OmegaConf

from dinov3_m2f.d2.datasets import LOVEDA_LABEL_MAP, SemSegGroundTruthLoader, get_dataset_dicts
from dinov3_m2f.d2.evaluation import SkippingSemSegEvaluator, build_sem_seg_test_loader
from dinov3_m2f.d2.mapper import SemSegDatasetMapper
from dinov3_m2f.d2.transforms import build_sem_seg_train_augmentations, scaled_lengths

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_dataset_dicts)(names="loveda_sem_seg_train"),
    mapper=L(SemSegDatasetMapper)(
        is_train=True,
        augmentations=L(build_sem_seg_train_augmentations)(
            crop_size=512,
            # short edge 1024 (the image size) * [0.5, 0.6, ..., 2.0] = 512 ... 2048
            short_edge_lengths=L(scaled_lengths)(base=1024, min_ratio=0.5, max_ratio=2.0),
            max_size=4096,
            ignore_label="${..ignore_label}",
        ),
        image_format="RGB",
        ignore_label=255,
        num_classes=7,
        label_map=LOVEDA_LABEL_MAP,  # the dataset's raw mask values -> class ids
        pad_size="${.augmentations.crop_size}",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_sem_seg_test_loader)(
    dataset=L(get_dataset_dicts)(names="loveda_sem_seg_val", filter_empty=False),
    mapper=L(SemSegDatasetMapper)(
        is_train=False,
        augmentations=[],  # native 1024x1024; sliding-window inference is the model's job
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(SkippingSemSegEvaluator)(
    dataset_name="${..test.dataset.names}",
    # applies the dataset's label_map, so the ground truth is 0..6 / 255 like in training
    sem_seg_loading_fn=L(SemSegGroundTruthLoader)(dataset_name="${..dataset_name}"),
)

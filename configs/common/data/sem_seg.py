"""Semantic segmentation data, the base of every dataset config: detectron2's loaders over
registered datasets, the Mask2Former training augmentations (crop 512), evaluation that skips
unreadable files. A dataset config sets the names, ``num_classes``, the crop and the label map
(``augmentations[0]`` is the resize, ``augmentations[1]`` the crop).

The training loader scans the whole training set before iteration 0 (results cached in
``scan_cache``), and its data order and augmentations are functions of ``train.seed`` and the
sample position, so that ``--resume`` continues exactly."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import get_detection_dataset_dicts
from omegaconf import OmegaConf

from dinov3_m2f.d2.evaluation import SkippingSemSegEvaluator, build_sem_seg_test_loader
from dinov3_m2f.d2.mapper import SemSegDatasetMapper
from dinov3_m2f.d2.train_loader import build_sem_seg_train_loader
from dinov3_m2f.data.scales import scaled_lengths

dataloader = OmegaConf.create()

dataloader.train = L(build_sem_seg_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="???"),
    mapper=L(SemSegDatasetMapper)(
        is_train=True,
        # Mask2Former's recipe: multi-scale resize, crop (the meta-architecture pads smaller
        # crops), photometric jitter (each applied with probability 0.5), horizontal flip.
        augmentations=[
            L(T.ResizeShortestEdge)(
                # short edge 512 (the crop size) * [0.5, 0.6, ..., 2.0] = 256 ... 1024
                short_edge_length=L(scaled_lengths)(base=512, min_ratio=0.5, max_ratio=2.0),
                max_size=2048,
                sample_style="choice",
            ),
            L(T.RandomCrop_CategoryAreaConstraint)(
                crop_type="absolute", crop_size=(512, 512), ignored_category="${...ignore_label}"
            ),
            # brightness +-12.5% (about +-32 grey levels around mid-grey), contrast, saturation
            L(T.RandomApply)(
                tfm_or_aug=L(T.RandomBrightness)(intensity_min=0.875, intensity_max=1.125), prob=0.5
            ),
            L(T.RandomApply)(
                tfm_or_aug=L(T.RandomContrast)(intensity_min=0.5, intensity_max=1.5), prob=0.5
            ),
            L(T.RandomApply)(
                tfm_or_aug=L(T.RandomSaturation)(intensity_min=0.5, intensity_max=1.5), prob=0.5
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",
        ignore_label=255,
        num_classes="???",
        # the dataset's raw mask value -> class id, when its files do not store class ids
        label_map=None,
        # samples that may fail to read during training (each retried once, then skipped with a
        # warning) before training stops listing them; counted per process / loading worker
        max_bad_samples=10,
    ),
    total_batch_size=16,
    num_workers=4,
    seed="${train.seed}",
    # results of the scan before iteration 0 (a restart re-reads only files that changed)
    scan_cache="${train.output_dir}/train_scan_cache.json",
)

dataloader.test = L(build_sem_seg_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="???", filter_empty=False),
    mapper=L(SemSegDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=512, max_size=2048)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

# reads the ground truth through the dataset's label_map, as the training mapper does
dataloader.evaluator = L(SkippingSemSegEvaluator)(dataset_name="${..test.dataset.names}")

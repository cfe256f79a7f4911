"""Semantic segmentation data, the base of every dataset config: detectron2's loaders over
registered datasets, the Mask2Former training augmentations (crop 512), evaluation that skips
unreadable files. A dataset config sets the names, ``num_classes``, the crop and the label map."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from dinov3_m2f.d2.evaluation import SkippingSemSegEvaluator, build_sem_seg_test_loader
from dinov3_m2f.d2.mapper import SemSegDatasetMapper
from dinov3_m2f.d2.transforms import build_sem_seg_train_augmentations, scaled_lengths

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="???"),
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
        ignore_label=255,
        num_classes="???",
        # the dataset's raw mask value -> class id, when its files do not store class ids
        label_map=None,
    ),
    total_batch_size=16,
    num_workers=4,
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

"""Dataset mapper for semantic segmentation: file names -> augmented tensors."""
import copy
import logging
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from dinov3_m2f.data.image import UnreadableImageError as CoreUnreadableImageError
from dinov3_m2f.data.image import read_image
from dinov3_m2f.data.io import check_same_size, read_label_mask

from .datasets import register_all
from .transforms import build_sem_seg_train_augmentations

logger = logging.getLogger(__name__)

__all__ = ["SemSegDatasetMapper", "UnreadableImageError", "read_image_or_raise"]

IMAGE_PAD_VALUE = 0
_UINT8_MAX = 255


class UnreadableImageError(ValueError):
    """An image file is missing or cannot be decoded.

    Attributes:
        path: the image file.
    """

    def __init__(self, message: str, *, path: str):
        super().__init__(message)
        self.path = path


def read_image_or_raise(path: str, *, image_format: str) -> np.ndarray:
    """:func:`dinov3_m2f.data.image.read_image`, raising this module's error type.

    Args:
        path: image file.
        image_format: channel order, "RGB" or "BGR".

    Returns:
        The decoded image [H, W, C].

    Raises:
        UnreadableImageError: the file does not exist or does not decode (truncated, not an
            image); the message names the file.
    """
    try:
        return read_image(path, image_format=image_format)
    except CoreUnreadableImageError as e:
        raise UnreadableImageError(str(e), path=path) from e


def _as_pair(size: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"{name} must be a positive int or (H, W), got {size!r}")
    return pair


class SemSegDatasetMapper:
    """Reads an image and its label mask, augments both, and returns model inputs.

    Training output: ``image`` uint8 [3, H, W], ``sem_seg`` int64 [H, W] (class ids,
    ``ignore_label`` at ignored and padded pixels), ``height``/``width`` of the original image,
    ``file_name``.
    Inference output: the same without ``sem_seg`` (the evaluator reads the ground truth itself).

    Masks go through :func:`dinov3_m2f.data.io.read_label_mask`, so an unreadable or multi-channel
    mask, a mask whose size differs from its image, or values outside ``0..num_classes-1`` other
    than ``ignore_label`` raise an error naming the file. A missing or corrupt image raises
    :class:`UnreadableImageError` naming the file, in training and inference alike; the test
    loader of :mod:`dinov3_m2f.d2.evaluation` turns that error into a skipped image.
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool,
        augmentations: Sequence[Union[T.Augmentation, T.Transform]],
        image_format: str = "RGB",
        ignore_label: int = 255,
        num_classes: Optional[int] = None,
        label_map: Optional[Mapping[int, int]] = None,
        pad_size: Optional[Union[int, Sequence[int]]] = None,
    ):
        """
        Args:
            is_train: training (reads and augments masks) or inference (images only).
            augmentations: detectron2 augmentations applied to image and mask together.
            image_format: image channel order given to ``detection_utils.read_image``.
            ignore_label: mask value of ignored pixels; also the padding value of masks.
            num_classes: when given, mask values are checked against ``0..num_classes-1``.
            label_map: raw mask value -> class id, for datasets whose files store other values
                (the dataset's ``label_map`` metadata, e.g. LoveDA).
            pad_size: (H, W) or int; training images are padded at the bottom/right up to this
                size (image with 0, mask with ``ignore_label``) so batches share one shape.
                Normally the crop size. ``None`` disables padding.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.ignore_label = int(ignore_label)
        self.num_classes = num_classes
        self.label_map = (
            None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        )
        self.pad_size = None if pad_size is None else _as_pair(pad_size, "pad_size")
        # Checked masks (num_classes given) whose classes and ignore label fit in uint8 need no
        # per-image range test before taking the uint8 resize path.
        self._uint8_masks = (
            num_classes is not None
            and num_classes <= _UINT8_MAX + 1
            and 0 <= self.ignore_label <= _UINT8_MAX
        )
        mode = "training" if is_train else "inference"
        logger.info("[SemSegDatasetMapper] augmentations in %s: %s", mode, self.augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        """Arguments from a yacs config (``INPUT.*`` and the first dataset's metadata)."""
        register_all()
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        metadata = MetadataCatalog.get(names[0])
        if is_train:
            if cfg.INPUT.CROP.TYPE != "absolute":
                raise ValueError(
                    "SemSegDatasetMapper needs INPUT.CROP.TYPE='absolute', "
                    f"got {cfg.INPUT.CROP.TYPE!r}"
                )
            augmentations = build_sem_seg_train_augmentations(
                crop_size=tuple(cfg.INPUT.CROP.SIZE),
                short_edge_lengths=cfg.INPUT.MIN_SIZE_TRAIN,
                max_size=cfg.INPUT.MAX_SIZE_TRAIN,
                ignore_label=metadata.ignore_label,
            )
            pad_size = tuple(cfg.INPUT.CROP.SIZE)
        else:
            augmentations = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
            pad_size = None
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": metadata.ignore_label,
            "num_classes": len(metadata.stuff_classes),
            "label_map": metadata.get("label_map"),
            "pad_size": pad_size,
        }

    def _read_mask(self, dataset_dict: Dict, image: np.ndarray) -> np.ndarray:
        mask_path = dataset_dict.pop("sem_seg_file_name", None)
        if mask_path is None:
            raise ValueError(
                f"dataset dict of {dataset_dict['file_name']} has no 'sem_seg_file_name'; "
                "training needs a mask for every image"
            )
        labels = read_label_mask(
            mask_path, label_map=self.label_map, num_classes=self.num_classes,
            ignore_value=self.ignore_label,
        )
        check_same_size(
            image.shape, labels.shape, image_path=dataset_dict["file_name"], mask_path=mask_path
        )
        # PIL resizes uint8 masks exactly (nearest); wider labels go through a float64 path.
        if self._uint8_masks or (labels.max() <= _UINT8_MAX and labels.min() >= 0):
            return labels.astype(np.uint8)
        return labels.astype(np.float64)

    def _pad(
        self, image: torch.Tensor, sem_seg: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pad image [3, h, w] and sem_seg [h, w] at the bottom/right to ``pad_size``."""
        h, w = image.shape[-2:]
        pad_h, pad_w = self.pad_size[0] - h, self.pad_size[1] - w
        if pad_h < 0 or pad_w < 0:
            raise ValueError(
                f"augmented image is {h}x{w}, larger than pad_size {self.pad_size}; "
                "pad_size should be the crop size"
            )
        padding = (0, pad_w, 0, pad_h)  # left, right, top, bottom
        image = F.pad(image, padding, value=IMAGE_PAD_VALUE)
        sem_seg = F.pad(sem_seg, padding, value=self.ignore_label)
        return image, sem_seg

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict: one record of a registered dataset (``file_name``, ``sem_seg_file_name``).

        Returns:
            A new dict with ``image``, ``height``, ``width``, ``file_name`` and, in training,
            ``sem_seg``.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_or_raise(dataset_dict["file_name"], image_format=self.image_format)
        utils.check_image_size(dataset_dict, image)  # sets height/width when missing
        if self.is_train:
            sem_seg = self._read_mask(dataset_dict, image)
        else:
            dataset_dict.pop("sem_seg_file_name", None)
            sem_seg = None

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if sem_seg is not None:
            sem_seg_t = torch.as_tensor(aug_input.sem_seg.astype(np.int64))  # [H, W]
            if self.pad_size is not None:
                image_t, sem_seg_t = self._pad(image_t, sem_seg_t)
            dataset_dict["sem_seg"] = sem_seg_t.contiguous()
        dataset_dict["image"] = image_t.contiguous()  # [3, H, W] uint8
        return dataset_dict

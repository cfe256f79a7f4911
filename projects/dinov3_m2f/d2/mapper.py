"""Dataset mapper for semantic segmentation: file names -> augmented tensors."""
import copy
import logging
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from dinov3_m2f.data.image import UnreadableImageError as CoreUnreadableImageError
from dinov3_m2f.data.image import read_image
from dinov3_m2f.data.io import check_same_size, read_label_mask

logger = logging.getLogger(__name__)

__all__ = ["SemSegDatasetMapper", "UnreadableImageError", "read_image_or_raise"]

_UINT8_MAX = 255


class UnreadableImageError(ValueError):
    """An image file (attribute ``path``) is missing or cannot be decoded."""

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


class SemSegDatasetMapper:
    """Reads an image and its label mask, augments both, and returns model inputs.

    Training output: ``image`` uint8 [3, H, W], ``sem_seg`` int64 [H, W] (class ids,
    ``ignore_label`` at ignored pixels), ``height``/``width`` of the original image,
    ``file_name``. Nothing is padded here: the meta-architecture pads images and label maps of a
    batch to one size.
    Inference output: the same without ``sem_seg`` (the evaluator reads the ground truth itself).

    Masks go through :func:`dinov3_m2f.data.io.read_label_mask`, so an unreadable or multi-channel
    mask, a mask whose size differs from its image, or values outside ``0..num_classes-1`` other
    than ``ignore_label`` raise an error naming the file. A missing or corrupt image raises
    :class:`UnreadableImageError` naming the file, in training and inference alike; the test
    loader of :mod:`dinov3_m2f.d2.evaluation` turns that error into a skipped image.
    """

    def __init__(
        self,
        *,
        is_train: bool,
        augmentations: Sequence[Union[T.Augmentation, T.Transform]],
        image_format: str = "RGB",
        ignore_label: int = 255,
        num_classes: Optional[int] = None,
        label_map: Optional[Mapping[int, int]] = None,
    ):
        """
        Args:
            is_train: training (reads and augments masks) or inference (images only).
            augmentations: detectron2 augmentations applied to image and mask together.
            image_format: image channel order given to ``detection_utils.read_image``.
            ignore_label: mask value of ignored pixels.
            num_classes: when given, mask values are checked against ``0..num_classes-1``.
            label_map: raw mask value -> class id, for datasets whose files store other values
                (the dataset's ``label_map`` metadata, e.g. LoveDA).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.ignore_label = int(ignore_label)
        self.num_classes = num_classes
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        # Checked masks (num_classes given) whose classes and ignore label fit in uint8 need no
        # per-image range test before taking the uint8 resize path.
        self._uint8_masks = (num_classes is not None and num_classes <= _UINT8_MAX + 1
                             and 0 <= self.ignore_label <= _UINT8_MAX)
        mode = "training" if is_train else "inference"
        logger.info("[SemSegDatasetMapper] augmentations in %s: %s", mode, self.augmentations)

    def _read_mask(self, dataset_dict: Dict, image: np.ndarray) -> np.ndarray:
        mask_path = dataset_dict.pop("sem_seg_file_name", None)
        if mask_path is None:
            raise ValueError(
                f"dataset dict of {dataset_dict['file_name']} has no 'sem_seg_file_name'; "
                "training needs a mask for every image"
            )
        labels = read_label_mask(mask_path, label_map=self.label_map, num_classes=self.num_classes,
                                 ignore_value=self.ignore_label)
        check_same_size(image.shape, labels.shape, image_path=dataset_dict["file_name"],
                        mask_path=mask_path)
        # PIL resizes uint8 masks exactly (nearest); wider labels go through a float64 path.
        if self._uint8_masks or (labels.max() <= _UINT8_MAX and labels.min() >= 0):
            return labels.astype(np.uint8)
        return labels.astype(np.float64)

    def __call__(self, dataset_dict: Dict) -> Dict:
        """A new dict (see the class docstring) for one record of a registered dataset."""
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
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))  # [H, W]
        dataset_dict["image"] = image_t  # [3, H, W] uint8
        return dataset_dict

"""Dataset mapper for semantic segmentation: file names -> augmented tensors."""
import copy
import functools
import logging
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from dinov3_m2f.data.bad_samples import BadSampleSkipper
from dinov3_m2f.data.image import read_image
from dinov3_m2f.data.masks import read_image_and_mask

logger = logging.getLogger(__name__)

__all__ = ["SemSegDatasetMapper"]

_UINT8_MAX = 255


class SemSegDatasetMapper:
    """Reads an image and its label mask, augments both, and returns model inputs.

    Training output: ``image`` uint8 [3, H, W], ``sem_seg`` int64 [H, W] (class ids,
    ``ignore_label`` at ignored pixels), ``height``/``width`` of the original image,
    ``file_name``. Nothing is padded here: the meta-architecture pads images and label maps of a
    batch to one size.
    Inference output: the same without ``sem_seg`` (the evaluator reads the ground truth itself).

    Files are read as everywhere else in the project: images with
    :func:`dinov3_m2f.data.image.read_image` and, in training, masks lined up with them by
    :func:`dinov3_m2f.data.masks.read_image_and_mask` (EXIF policy, channels, size, label values;
    errors name the file). In training a sample that fails to read is retried once, then skipped
    with a warning (``None`` is returned: the training stream takes another sample); one skip
    more than ``max_bad_samples`` (counted per process / data-loading worker) raises
    :class:`~dinov3_m2f.data.bad_samples.TooManyBadSamplesError` listing them. In inference a
    missing or corrupt image raises :class:`~dinov3_m2f.data.image.UnreadableImageError`; the
    test loader of :mod:`dinov3_m2f.d2.evaluation` turns it into a skipped image.
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
        max_bad_samples: int = 0,
    ):
        """
        Args:
            is_train: training (reads and augments masks) or inference (images only).
            augmentations: detectron2 augmentations applied to image and mask together.
            image_format: image channel order, "RGB" or "BGR".
            ignore_label: mask value of ignored pixels.
            num_classes: when given, mask values are checked against ``0..num_classes-1``.
            label_map: raw mask value -> class id, for datasets whose files store other values
                (the dataset's ``label_map`` metadata, e.g. LoveDA).
            max_bad_samples: training samples that may be skipped for failing to read twice.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.ignore_label = int(ignore_label)
        self.num_classes = num_classes
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        self.skip_bad_samples = BadSampleSkipper(max_bad_samples=max_bad_samples)
        # Checked masks (num_classes given) whose classes and ignore label fit in uint8 need no
        # per-image range test before taking the uint8 resize path.
        self._uint8_masks = (num_classes is not None and num_classes <= _UINT8_MAX + 1
                             and 0 <= self.ignore_label <= _UINT8_MAX)
        mode = "training" if is_train else "inference"
        logger.info("[SemSegDatasetMapper] augmentations in %s: %s", mode, self.augmentations)

    def _resizable(self, labels: np.ndarray) -> np.ndarray:
        """PIL resizes uint8 masks exactly (nearest); wider labels go through a float64 path."""
        if self._uint8_masks or (labels.max() <= _UINT8_MAX and labels.min() >= 0):
            return labels.astype(np.uint8)
        return labels.astype(np.float64)

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        """A new dict (see the class docstring) for one record of a registered dataset; ``None``
        for a training sample skipped because it failed to read twice."""
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        mask_path = dataset_dict.pop("sem_seg_file_name", None)
        if not self.is_train:
            image, sem_seg = read_image(file_name, image_format=self.image_format), None
        elif mask_path is None:
            raise ValueError(
                f"dataset dict of {file_name} has no 'sem_seg_file_name'; training needs a mask "
                "for every image"
            )
        else:
            read = functools.partial(
                read_image_and_mask, file_name, mask_path, label_map=self.label_map,
                num_classes=self.num_classes, ignore_value=self.ignore_label,
                image_format=self.image_format,
            )
            sample = self.skip_bad_samples(read, path=file_name)
            if sample is None:
                return None
            image, sem_seg = sample[0], self._resizable(sample[1])
        utils.check_image_size(dataset_dict, image)  # sets height/width when missing

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))  # [H, W]
        dataset_dict["image"] = image_t  # [3, H, W] uint8
        return dataset_dict

"""Training augmentations for semantic segmentation (Mask2Former recipe).

Order: multi-scale ResizeShortestEdge -> random crop (optionally rejecting crops dominated by one
class) -> photometric jitter (brightness, contrast, saturation; each applied with probability 0.5,
like SSD's colour augmentation) -> horizontal flip.
"""
from typing import List, Sequence, Union

from detectron2.data import transforms as T

__all__ = ["build_sem_seg_train_augmentations", "photometric_augmentations", "scaled_lengths"]

# Photometric jitter: intensity ranges (1.0 = unchanged) and the chance of applying each one.
BRIGHTNESS_RANGE = (0.875, 1.125)  # about +-32 grey levels around mid-grey
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
JITTER_PROB = 0.5


def scaled_lengths(base: int, *, min_ratio: float = 0.5, max_ratio: float = 2.0,
                   step: float = 0.1) -> List[int]:
    """Short-edge lengths ``base * r`` for ``r`` in ``min_ratio, min_ratio + step, ... max_ratio``.

    Args:
        base: reference length (usually the crop size).
        min_ratio, max_ratio: ratio range, both included.
        step: ratio step.

    Returns:
        Increasing list of ints (e.g. base 512 -> 256, 307, ..., 1024).
    """
    if base <= 0 or step <= 0 or not 0 < min_ratio <= max_ratio:
        raise ValueError(
            f"need base > 0, step > 0 and 0 < min_ratio <= max_ratio; got base={base}, "
            f"step={step}, min_ratio={min_ratio}, max_ratio={max_ratio}"
        )
    num = int(round((max_ratio - min_ratio) / step)) + 1
    return [int(base * (min_ratio + i * step)) for i in range(num)]


def photometric_augmentations() -> List[T.Augmentation]:
    """Random brightness, contrast and saturation, each applied with probability ``JITTER_PROB``.

    Saturation weighs the channels as RGB (the mapper's default ``image_format``).

    Returns:
        List of augmentations; they leave the mask untouched.
    """
    return [
        T.RandomApply(T.RandomBrightness(*BRIGHTNESS_RANGE), prob=JITTER_PROB),
        T.RandomApply(T.RandomContrast(*CONTRAST_RANGE), prob=JITTER_PROB),
        T.RandomApply(T.RandomSaturation(*SATURATION_RANGE), prob=JITTER_PROB),
    ]


def build_sem_seg_train_augmentations(
    *,
    crop_size: Union[int, Sequence[int]],
    short_edge_lengths: Sequence[int],
    max_size: int,
    single_category_max_area: float = 1.0,
    ignore_label: int = 255,
    color_jitter: bool = True,
    flip: bool = True,
) -> List[T.Augmentation]:
    """Build the training augmentation list.

    Args:
        crop_size: crop (H, W), or one int for a square crop. Images smaller than the crop give a
            smaller crop; the meta-architecture pads the batch.
        short_edge_lengths: the short edge is resized to one of these (chosen uniformly).
        max_size: upper bound of the long edge after resizing.
        single_category_max_area: retry crops in which one class covers more than this fraction
            (1.0 disables the check).
        ignore_label: label not counted by the area check.
        color_jitter: add :func:`photometric_augmentations`.
        flip: add a horizontal flip with probability 0.5.

    Returns:
        List of detectron2 augmentations.
    """
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if len(crop) != 2 or min(crop) <= 0:
        raise ValueError(f"crop_size must be a positive int or (H, W), got {crop_size!r}")
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(list(short_edge_lengths), max_size, sample_style="choice"),
        T.RandomCrop_CategoryAreaConstraint(
            "absolute", crop, single_category_max_area=single_category_max_area,
            ignored_category=ignore_label,
        ),
    ]
    if color_jitter:
        augs.extend(photometric_augmentations())
    if flip:
        augs.append(T.RandomFlip(horizontal=True))
    return augs

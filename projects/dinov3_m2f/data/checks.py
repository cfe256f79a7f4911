"""Checking a semantic segmentation dataset before training (no detectron2).

:func:`check_dataset` reads every image and mask of a list of dataset dicts (``file_name`` and,
when labelled, ``sem_seg_file_name``) and collects every problem instead of stopping at the first:
unreadable files, multi-channel (RGB/RGBA) masks, image/mask size mismatches and label values that
are neither a class id nor the ignore value (after the dataset's ``label_map``). It also counts the
pixels of every class. Masks are read with :mod:`dinov3_m2f.data.io`, so the checks and their
messages are the ones training and evaluation apply.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .files import IMAGE_SUFFIXES, MASK_SUFFIX, duplicate_message, pair_image_mask_files
from .io import IGNORE_VALUE, check_label_values, check_same_size, read_label_mask

logger = logging.getLogger(__name__)

__all__ = ["DatasetReport", "Problem", "check_dataset", "format_histogram", "pair_files"]

# Log progress every this many images.
PROGRESS_EVERY = 500


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset.

    Attributes:
        path: the file concerned.
        message: what is wrong (names the file).
    """

    path: str
    message: str


@dataclass
class DatasetReport:
    """Result of :func:`check_dataset`.

    Attributes:
        num_images: images checked.
        num_masks: masks checked.
        problems: every problem found.
        pixels: [num_classes] int64, labelled pixels per class (readable masks only).
        images_with_class: [num_classes] int64, masks containing each class.
        ignore_pixels: pixels equal to the ignore value.
    """

    num_images: int
    num_masks: int
    pixels: np.ndarray
    images_with_class: np.ndarray
    ignore_pixels: int = 0
    problems: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _image_shape(path: str) -> Tuple[int, ...]:
    """Decode an image fully (catches truncated files) and return its array shape."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as img:
            return np.asarray(img).shape
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e


def _check_one(
    record: Mapping, *, report: DatasetReport, num_classes: int, ignore_value: int,
    label_map: Optional[Mapping[int, int]],
) -> None:
    image_path = record["file_name"]
    mask_path = record.get("sem_seg_file_name")
    image_shape = None
    try:
        image_shape = _image_shape(image_path)
    except (OSError, ValueError) as e:
        report.problems.append(Problem(image_path, str(e)))
    if mask_path is None:
        return
    report.num_masks += 1
    try:
        labels = read_label_mask(mask_path, label_map=label_map, ignore_value=ignore_value)  # [H, W]
    except (OSError, ValueError) as e:
        report.problems.append(Problem(mask_path, str(e)))
        return
    if image_shape is not None:
        try:
            check_same_size(image_shape, labels.shape, image_path=image_path, mask_path=mask_path)
        except ValueError as e:
            report.problems.append(Problem(mask_path, str(e)))
    try:
        check_label_values(labels, num_classes=num_classes, ignore_value=ignore_value, path=mask_path)
    except ValueError as e:
        report.problems.append(Problem(mask_path, str(e)))
    valid = labels[(labels >= 0) & (labels < num_classes)]
    counts = np.bincount(valid, minlength=num_classes)  # [num_classes]
    report.pixels += counts
    report.images_with_class += counts > 0
    report.ignore_pixels += int((labels == ignore_value).sum())


def check_dataset(
    dataset_dicts: Sequence[Mapping],
    *,
    num_classes: int,
    ignore_value: int = IGNORE_VALUE,
    label_map: Optional[Mapping[int, int]] = None,
) -> DatasetReport:
    """Check every image and mask of a dataset and count the pixels of every class.

    Args:
        dataset_dicts: dicts with ``file_name`` and optionally ``sem_seg_file_name``.
        num_classes: number of classes; labels must be ``0..num_classes-1`` or ``ignore_value``.
        ignore_value: label of ignored pixels.
        label_map: raw mask value -> class id (or ``ignore_value``), for datasets whose files hold
            other values (e.g. LoveDA).

    Returns:
        The :class:`DatasetReport`.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    report = DatasetReport(
        num_images=len(dataset_dicts),
        num_masks=0,
        pixels=np.zeros(num_classes, dtype=np.int64),
        images_with_class=np.zeros(num_classes, dtype=np.int64),
    )
    for i, record in enumerate(dataset_dicts):
        if "file_name" not in record:
            raise ValueError(f"dataset dict #{i} has no 'file_name': {dict(record)!r}")
        _check_one(record, report=report, num_classes=num_classes, ignore_value=ignore_value, label_map=label_map)
        if (i + 1) % PROGRESS_EVERY == 0:
            logger.info("Checked %d/%d images, %d problems so far", i + 1, len(dataset_dicts), len(report.problems))
    logger.info(
        "Checked %d images and %d masks: %d problems", report.num_images, report.num_masks, len(report.problems)
    )
    return report


def pair_files(image_dir: str, mask_dir: str) -> Tuple[List[Dict[str, str]], List[Problem]]:
    """Pair ``image_dir/**/<name>.{jpg,jpeg,png}`` with ``mask_dir/**/<name>.png``.

    Uses :func:`~dinov3_m2f.data.files.pair_image_mask_files`, like the dataset registration; but
    where the registration raises, unpaired and same-named files are reported here, so that one
    run lists everything that is wrong.

    Args:
        image_dir: images, searched recursively.
        mask_dir: masks, searched recursively.

    Returns:
        (dataset dicts of the pairs, problems: images without mask, masks without image, files
        sharing a name, an image directory without images).
    """
    pairing = pair_image_mask_files(image_dir, mask_dir)
    images, masks = pairing.images, pairing.masks
    problems = [
        Problem(images[k], f"image {images[k]} has no mask {os.path.join(mask_dir, k + MASK_SUFFIX)}")
        for k in pairing.images_without_mask
    ]
    problems += [Problem(masks[k], f"mask {masks[k]} has no image in {image_dir}") for k in pairing.masks_without_image]
    problems += [Problem(other, duplicate_message(kept, other)) for kept, other in pairing.duplicates]
    if not images:
        problems.append(Problem(image_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {image_dir}"))
    return pairing.dataset_dicts(), problems


def format_histogram(report: DatasetReport, *, class_names: Optional[Sequence[str]] = None) -> str:
    """The per-class pixel table of a report as text.

    Args:
        report: a :class:`DatasetReport`.
        class_names: optional name per class id.

    Returns:
        A table with id, name, pixels, share of labelled pixels and number of masks per class, and a
        row for ignored pixels.
    """
    num_classes = len(report.pixels)
    names = list(class_names) if class_names is not None else [""] * num_classes
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries for {num_classes} classes")
    total = int(report.pixels.sum())
    name_width = max([len("name"), *(len(n) for n in names)])
    header = f"{'id':>4}  {'name':<{name_width}}  {'pixels':>14}  {'share %':>8}  {'masks':>7}"
    lines = [header, "-" * len(header)]
    for c in range(num_classes):
        share = 100.0 * report.pixels[c] / total if total else 0.0
        lines.append(
            f"{c:>4}  {names[c]:<{name_width}}  {int(report.pixels[c]):>14}  {share:>8.3f}  "
            f"{int(report.images_with_class[c]):>7}"
        )
    lines.append("-" * len(header))
    lines.append(f"{'':>4}  {'(ignore)':<{name_width}}  {report.ignore_pixels:>14}")
    lines.append(f"{'':>4}  {'(labelled)':<{name_width}}  {total:>14}")
    return "\n".join(lines)

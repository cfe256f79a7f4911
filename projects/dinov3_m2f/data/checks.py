"""Checking a semantic segmentation dataset before training (no detectron2).

:func:`check_sample` owns every per-file check of one dataset dict (``file_name`` and, when
labelled, ``sem_seg_file_name``): unreadable or refused images, unreadable or multi-channel
(RGB/RGBA) masks, masks whose size fits neither the displayed nor the stored size of their image,
and label values that are neither a class id nor the ignore value (after the dataset's
``label_map``). It also notes what is worth a look without being wrong (EXIF-rotated images and
which size their mask matched, 16-bit images) and counts the pixels of every class. Images and
masks are read with :mod:`dinov3_m2f.data.image` and :mod:`dinov3_m2f.data.masks`, so the checks and
their messages are the ones training and evaluation apply.

:func:`check_dataset` (``tools/check_dataset.py``) runs it on every sample, decoding every image;
:func:`dinov3_m2f.data.scan.scan_dataset` (before training) runs it reading image headers only.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np
from tqdm import tqdm

from .files import IMAGE_SUFFIXES, MASK_SUFFIX, duplicate_message, pair_image_mask_files
from .image import ImageHeader, UnreadableImageError, read_image_and_header, read_image_header
from .masks import IGNORE_VALUE, MASK_STORED, check_label_values, mask_alignment, read_label_mask

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetReport",
    "Problem",
    "SampleCheck",
    "check_dataset",
    "check_sample",
    "format_histogram",
    "map_with_progress",
    "pair_files",
    "validate_dataset_dicts",
]

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class Problem:
    """One finding about a file of a dataset (a problem, or a note worth a look).

    Attributes:
        path: the file concerned.
        message: what was found (names the file).
    """

    path: str
    message: str


@dataclass
class SampleCheck:
    """Result of :func:`check_sample` for one dataset dict.

    Attributes:
        problems: what is wrong (each names the file).
        notes: what is not wrong but worth a look (EXIF orientation, 16-bit pixels).
        exif_rotated: whether the image has an EXIF orientation other than 1.
        pixels: [num_classes] int64, labelled pixels per class; ``None`` without a readable mask.
        ignore_pixels: pixels equal to the ignore value.
    """

    problems: List[Problem] = field(default_factory=list)
    notes: List[Problem] = field(default_factory=list)
    exif_rotated: bool = False
    pixels: Optional[np.ndarray] = None
    ignore_pixels: int = 0


@dataclass
class DatasetReport:
    """Result of :func:`check_dataset`.

    Attributes:
        num_images: images checked.
        num_masks: masks checked.
        pixels: [num_classes] int64, labelled pixels per class (readable masks only).
        images_with_class: [num_classes] int64, masks containing each class.
        ignore_pixels: pixels equal to the ignore value.
        exif_rotated: images with an EXIF orientation other than 1, in dataset order.
        problems: every problem found.
        notes: every note (see :class:`SampleCheck`).
    """

    num_images: int
    num_masks: int
    pixels: np.ndarray
    images_with_class: np.ndarray
    ignore_pixels: int = 0
    exif_rotated: List[str] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    notes: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def map_with_progress(
    fn: Callable[[_Item], _Result], items: Sequence[_Item], *, num_workers: Optional[int], desc: str,
    progress: bool = True,
) -> List[_Result]:
    """``[fn(item) for item in items]`` on a thread pool, with a progress bar.

    Threads suit file checks: Pillow and zlib release the GIL while they decode.

    Args:
        fn: the function; it must not raise for a bad item (return the problem instead).
        items: its inputs.
        num_workers: threads (``None``: Python's default for I/O-bound pools).
        desc: progress bar label.
        progress: show the bar (on stderr).

    Returns:
        The results, in the order of ``items``.
    """
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        results = pool.map(fn, items)
        return list(tqdm(results, total=len(items), desc=desc, unit="file", disable=not progress))


def validate_dataset_dicts(dataset_dicts: Sequence[Mapping], *, num_classes: int) -> None:
    """Raise for arguments no check can run on: ``num_classes`` < 1, a dict without ``file_name``."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for i, record in enumerate(dataset_dicts):
        if "file_name" not in record:
            raise ValueError(f"dataset dict #{i} has no 'file_name': {dict(record)!r}")


def _exif_note(header: ImageHeader, mask_path: Optional[str], alignment: Optional[str]) -> str:
    stored, displayed = header.stored_size, header.displayed_size
    note = (
        f"image {header.path} has EXIF orientation {header.orientation}: stored "
        f"{stored[0]}x{stored[1]}, displayed {displayed[0]}x{displayed[1]} (HxW)"
    )
    if alignment is None:
        return note
    if stored == displayed:
        return note + (
            f"; its mask {mask_path} fits both sizes and is used as displayed (look at its "
            "overlay: check_dataset --visualize)"
        )
    if alignment == MASK_STORED:
        return note + f"; its mask {mask_path} has the stored size and is turned with the image"
    return note + f"; its mask {mask_path} has the displayed size and is used as it is"


def check_sample(
    record: Mapping,
    *,
    num_classes: int,
    ignore_value: int = IGNORE_VALUE,
    label_map: Optional[Mapping[int, int]] = None,
    decode_image: bool = True,
) -> SampleCheck:
    """Run every check on one dataset dict; never raises for a bad file.

    Args:
        record: dict with ``file_name`` and optionally ``sem_seg_file_name``.
        num_classes: number of classes; labels must be ``0..num_classes-1`` or ``ignore_value``.
        ignore_value: label of ignored pixels.
        label_map: raw mask value -> class id (or ``ignore_value``).
        decode_image: decode the image's pixels (catches truncated files); otherwise only its
            header is read (size, pixel format, EXIF orientation). Masks are always decoded.

    Returns:
        The :class:`SampleCheck`.
    """
    result = SampleCheck()
    image_path, mask_path = record["file_name"], record.get("sem_seg_file_name")
    header: Optional[ImageHeader] = None
    try:
        header = read_image_and_header(image_path)[1] if decode_image else read_image_header(image_path)
    except UnreadableImageError as e:
        result.problems.append(Problem(image_path, str(e)))
    if header is not None and header.is_16_bit:
        result.notes.append(Problem(image_path, f"image {image_path} is 16-bit grayscale: read as 0..65535 -> 0..255"))
    alignment = None
    if mask_path is not None:
        try:
            labels = read_label_mask(mask_path, label_map=label_map, ignore_value=ignore_value)  # [H, W]
        except (OSError, ValueError) as e:
            result.problems.append(Problem(mask_path, str(e)))
            labels = None
        if labels is not None:
            if header is not None:
                try:
                    alignment = mask_alignment(header, labels.shape, mask_path=mask_path)
                except ValueError as e:
                    result.problems.append(Problem(mask_path, str(e)))
            try:
                check_label_values(labels, num_classes=num_classes, ignore_value=ignore_value, path=mask_path)
            except ValueError as e:
                result.problems.append(Problem(mask_path, str(e)))
            valid = labels[(labels >= 0) & (labels < num_classes)]
            result.pixels = np.bincount(valid, minlength=num_classes)  # [num_classes]
            result.ignore_pixels = int((labels == ignore_value).sum())
    if header is not None and header.transpose is not None:
        result.exif_rotated = True
        result.notes.append(Problem(image_path, _exif_note(header, mask_path, alignment)))
    return result


def check_dataset(
    dataset_dicts: Sequence[Mapping],
    *,
    num_classes: int,
    ignore_value: int = IGNORE_VALUE,
    label_map: Optional[Mapping[int, int]] = None,
    num_workers: Optional[int] = None,
    progress: bool = True,
) -> DatasetReport:
    """Check every image and mask of a dataset (decoding every file) and count class pixels.

    Args:
        dataset_dicts: dicts with ``file_name`` and optionally ``sem_seg_file_name``.
        num_classes: number of classes; labels must be ``0..num_classes-1`` or ``ignore_value``.
        ignore_value: label of ignored pixels.
        label_map: raw mask value -> class id (or ``ignore_value``), for datasets whose files hold
            other values (e.g. LoveDA).
        num_workers: reading threads (``None``: Python's default).
        progress: show a progress bar.

    Returns:
        The :class:`DatasetReport`, problems and notes in dataset order.
    """
    validate_dataset_dicts(dataset_dicts, num_classes=num_classes)
    report = DatasetReport(
        num_images=len(dataset_dicts),
        num_masks=sum("sem_seg_file_name" in record for record in dataset_dicts),
        pixels=np.zeros(num_classes, dtype=np.int64),
        images_with_class=np.zeros(num_classes, dtype=np.int64),
    )

    def check(record: Mapping) -> SampleCheck:
        return check_sample(record, num_classes=num_classes, ignore_value=ignore_value, label_map=label_map)

    results = map_with_progress(check, dataset_dicts, num_workers=num_workers, desc="check", progress=progress)
    for record, result in zip(dataset_dicts, results):
        report.problems += result.problems
        report.notes += result.notes
        if result.exif_rotated:
            report.exif_rotated.append(record["file_name"])
        if result.pixels is not None:
            report.pixels += result.pixels
            report.images_with_class += result.pixels > 0
            report.ignore_pixels += result.ignore_pixels
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

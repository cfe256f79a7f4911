"""Reading and checking semantic segmentation label masks (no detectron2).

A label mask is a single-channel PNG whose pixel values are class ids; one value (usually 255)
marks pixels to ignore. Raw datasets whose files use other values (e.g. LoveDA: 0 = no-data,
1..7 = classes) are read through a ``label_map`` that sends every raw value to a class id or to
the ignore value.

The same reader serves the training mapper, the evaluator and the command-line tools, so every
consumer sees identical labels and identical error messages. :func:`read_image_and_mask` and
:func:`read_mask_for_image` read a mask lined up with its image as displayed, following the EXIF
orientation policy of :mod:`dinov3_m2f.data.image`.
"""
import logging
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..atomic_files import atomic_open
from ..listing import short_list
from .image import ImageHeader, read_image_and_header, read_image_header

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_VALUE",
    "MASK_DISPLAYED",
    "MASK_FORMAT_HINT",
    "MASK_STORED",
    "check_label_values",
    "check_same_size",
    "convert_label_png",
    "convert_label_pngs",
    "mask_alignment",
    "read_image_and_mask",
    "read_label_mask",
    "read_mask_for_image",
    "shifted_label_map",
    "write_label_png",
]

# The label of ignored pixels in every dataset this project writes or registers.
IGNORE_VALUE = 255

MASK_FORMAT_HINT = (
    "convert it to a single-channel label PNG: pixel values are class ids, {ignore} = ignore"
)
# What mask_alignment returns: the mask has the image's displayed size (used as it is), or its
# stored, pre-EXIF size (the image's orientation transform is applied to it).
MASK_DISPLAYED = "displayed"
MASK_STORED = "stored"
# convert_label_pngs logs its progress every this many files.
_PROGRESS_EVERY = 500


def _format_values(values: Sequence[int]) -> str:
    return "[" + short_list([int(v) for v in values], noun="values") + "]"


def shifted_label_map(num_classes: int, *, ignore_value: int = IGNORE_VALUE) -> Dict[int, int]:
    """The label map of datasets whose files store 0 = unlabelled and 1..N = classes.

    Args:
        num_classes: N, the number of classes.
        ignore_value: what raw 0 becomes.

    Returns:
        {0: ignore_value, 1: 0, ..., N: N - 1}.
    """
    return {0: ignore_value, **{raw: raw - 1 for raw in range(1, num_classes + 1)}}


def _present_values(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array; a linear count for 8/16-bit masks."""
    if labels.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(labels.ravel()))
    return np.unique(labels)


def _label_lut(
    label_map: Mapping[int, int], present: np.ndarray, *, path: str
) -> np.ndarray:
    """Lookup table raw value -> mapped value covering ``present``; raises for unmapped values."""
    if len(label_map) == 0:
        raise ValueError("label_map must not be empty")
    keys = np.array([int(k) for k in label_map.keys()], dtype=np.int64)
    if keys.min() < 0:
        raise ValueError(f"label_map keys must be >= 0, got {sorted(keys.tolist())}")
    unknown = np.setdiff1d(present, keys)
    if unknown.size:
        raise ValueError(
            f"mask {path} contains values {_format_values(unknown.tolist())} that the dataset's "
            f"label_map does not cover (known raw values: {sorted(keys.tolist())})"
        )
    lut = np.zeros(int(max(keys.max(), present.max(initial=0))) + 1, dtype=np.int64)
    for raw, mapped in label_map.items():
        lut[int(raw)] = int(mapped)
    return lut


def _check_present_values(
    present: np.ndarray, *, num_classes: int, ignore_value: int, path: str
) -> None:
    bad = present[((present < 0) | (present >= num_classes)) & (present != ignore_value)]
    if bad.size:
        raise ValueError(
            f"mask {path} contains label values {_format_values(bad.tolist())} outside "
            f"0..{num_classes - 1} (num_classes={num_classes}) that are not the ignore value "
            f"{ignore_value}"
        )


def check_label_values(
    labels: np.ndarray, *, num_classes: int, ignore_value: int = IGNORE_VALUE, path: str = "<array>"
) -> None:
    """Raise if ``labels`` holds values other than ``0..num_classes-1`` and ``ignore_value``.

    Args:
        labels: integer label array.
        num_classes: number of classes of the dataset.
        ignore_value: the value that marks ignored pixels.
        path: file the labels came from, used in error messages.
    """
    _check_present_values(
        _present_values(labels), num_classes=num_classes, ignore_value=ignore_value, path=path
    )


def check_same_size(
    image_shape: Tuple[int, ...], mask_shape: Tuple[int, ...], *, image_path: str, mask_path: str
) -> None:
    """Raise if an image and its mask differ in height or width.

    Args:
        image_shape: shape of the image array (H, W[, C]).
        mask_shape: shape of the mask array (H, W).
        image_path: image file, named in the error.
        mask_path: mask file, named in the error.
    """
    if tuple(image_shape[:2]) != tuple(mask_shape[:2]):
        raise ValueError(
            f"image {image_path} is {image_shape[0]}x{image_shape[1]} (HxW) but its mask "
            f"{mask_path} is {mask_shape[0]}x{mask_shape[1]}; they must have the same size"
        )


def mask_alignment(image: ImageHeader, mask_size: Tuple[int, int], *, mask_path: str) -> str:
    """How a mask of ``mask_size`` lines up with ``image`` (EXIF policy of :mod:`.image`).

    Args:
        image: header of the mask's image.
        mask_size: (H, W) of the mask file.
        mask_path: mask file, named in the error.

    Returns:
        :data:`MASK_DISPLAYED` (the mask has the displayed size, including when stored and
        displayed sizes are equal) or :data:`MASK_STORED` (the stored size only: the image's
        orientation transform must be applied to the mask).

    Raises:
        ValueError: any other size; names both files and their sizes.
    """
    mask_size = tuple(mask_size)
    if mask_size == image.displayed_size:
        return MASK_DISPLAYED
    if mask_size == image.stored_size:
        return MASK_STORED
    if image.displayed_size == image.stored_size:
        check_same_size(image.displayed_size, mask_size, image_path=image.path, mask_path=mask_path)
    height, width = image.displayed_size
    raise ValueError(
        f"image {image.path} is {height}x{width} (HxW) as displayed (stored "
        f"{image.stored_size[0]}x{image.stored_size[1]}, EXIF orientation {image.orientation}) but "
        f"its mask {mask_path} is {mask_size[0]}x{mask_size[1]}; a mask must have the displayed "
        "or the stored size of its image"
    )


def _open_mask(path: str) -> Image.Image:
    """The decoded mask image (the caller closes it); errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file {path} does not exist")
    img = None
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        if img is not None:
            img.close()
        raise ValueError(f"cannot read mask file {path}: {e}") from e
    return img


def read_label_mask(
    path: str,
    *,
    label_map: Optional[Mapping[int, int]] = None,
    num_classes: Optional[int] = None,
    ignore_value: int = IGNORE_VALUE,
    image_header: Optional[ImageHeader] = None,
) -> np.ndarray:
    """Read a single-channel label mask and check its values.

    Palette ("P" mode) PNGs are read as their palette indices, like PIL does. The mask's own EXIF
    orientation, if any, is ignored.

    Args:
        path: mask file.
        label_map: optional raw value -> class id mapping applied after reading.
        num_classes: when given, values must lie in ``0..num_classes-1`` or equal ``ignore_value``
            (checked after ``label_map``).
        ignore_value: the value that marks ignored pixels.
        image_header: header of the mask's image; when given, the mask is lined up with the
            image as displayed (see :func:`mask_alignment`), and a mask of another size is an error
            naming both files.

    Returns:
        int64 array [H, W].
    """
    with _open_mask(path) as img:
        mode = img.mode
        mask = img
        if image_header is not None:
            width, height = img.size
            if mask_alignment(image_header, (height, width), mask_path=path) == MASK_STORED:
                mask = img.transpose(image_header.transpose)
        labels = np.asarray(mask)
    if labels.ndim != 2:
        channels = labels.shape[2] if labels.ndim == 3 else labels.ndim
        raise ValueError(
            f"mask {path} has {channels} channels (PIL mode {mode!r}); "
            + MASK_FORMAT_HINT.format(ignore=ignore_value)
        )
    if labels.dtype.kind not in "ui":  # e.g. PIL mode "1" (bool) or "F" (float)
        labels = labels.astype(np.int64)
    # The values present are counted once: the label map and the range check only need those.
    present = _present_values(labels)
    if label_map is not None:
        lut = _label_lut(label_map, present, path=path)
        labels, present = lut[labels], np.unique(lut[present])  # int64 [H, W]
    else:
        labels = labels.astype(np.int64)
    if num_classes is not None:
        _check_present_values(present, num_classes=num_classes, ignore_value=ignore_value, path=path)
    return labels


def read_image_and_mask(
    image_path: str,
    mask_path: str,
    *,
    label_map: Optional[Mapping[int, int]] = None,
    num_classes: Optional[int] = None,
    ignore_value: int = IGNORE_VALUE,
    image_format: str = "RGB",
) -> Tuple[np.ndarray, np.ndarray]:
    """Read an image as displayed and its label mask lined up with it (one training sample).

    Args:
        image_path: image file (read with :func:`~dinov3_m2f.data.image.read_image`).
        mask_path: its label mask.
        label_map: raw mask value -> class id, as for :func:`read_label_mask`.
        num_classes: when given, mask values are checked against ``0..num_classes-1``.
        ignore_value: the value that marks ignored pixels.
        image_format: ``"RGB"`` or ``"BGR"``.

    Returns:
        (image uint8 [H, W, 3], labels int64 [H, W]), H and W as displayed.

    Raises:
        UnreadableImageError: the image is missing or does not decode.
        FileNotFoundError, ValueError: the mask is missing, does not decode, has several
            channels, values outside the classes, or a size that fits neither the displayed nor
            the stored size of the image; each names the file(s).
    """
    image, header = read_image_and_header(image_path, image_format=image_format)
    labels = read_label_mask(
        mask_path, label_map=label_map, num_classes=num_classes, ignore_value=ignore_value, image_header=header
    )
    return image, labels


def read_mask_for_image(
    mask_path: str,
    *,
    image_path: str,
    label_map: Optional[Mapping[int, int]] = None,
    num_classes: Optional[int] = None,
    ignore_value: int = IGNORE_VALUE,
) -> np.ndarray:
    """A ground-truth mask lined up with its image as displayed, reading only the image's header.

    Args:
        mask_path: label mask.
        image_path: its image (only the header is read).
        label_map: raw mask value -> class id, as for :func:`read_label_mask`.
        num_classes: when given, mask values are checked against ``0..num_classes-1``.
        ignore_value: the value that marks ignored pixels.

    Returns:
        int64 [H, W], H and W of the image as displayed.
    """
    return read_label_mask(
        mask_path, label_map=label_map, num_classes=num_classes, ignore_value=ignore_value,
        image_header=read_image_header(image_path),
    )


def write_label_png(labels: np.ndarray, path: str) -> None:
    """Write an [H, W] label array (values 0..255) as a single-channel 8-bit PNG, atomically.

    Args:
        labels: integer array [H, W] with values in 0..255.
        path: destination file; its folder must exist.
    """
    with atomic_open(path, "wb", suffix=".png") as f:
        Image.fromarray(labels.astype(np.uint8)).save(f, format="PNG")


def convert_label_png(src: str, dst: str, *, label_map: Mapping[int, int]) -> None:
    """Read the label mask ``src``, map its raw values and write the result to ``dst``.

    Args:
        src: single-channel label PNG with raw values.
        dst: destination PNG (written atomically).
        label_map: raw value -> class id (or the ignore value); every raw value in ``src`` must
            be a key, otherwise a ValueError names the file.
    """
    write_label_png(read_label_mask(src, label_map=label_map), dst)


def convert_label_pngs(
    jobs: Sequence[Tuple[str, str]], *, label_map: Mapping[int, int], overwrite: bool = False
) -> Tuple[int, int]:
    """:func:`convert_label_png` for many files; existing outputs are kept unless ``overwrite``.

    Each output is written atomically, so an interrupted run can simply be started again.

    Args:
        jobs: (source, destination) paths.
        label_map: raw value -> class id (or the ignore value).
        overwrite: rewrite destinations that already exist.

    Returns:
        (files written, existing files kept).
    """
    written = 0
    for i, (src, dst) in enumerate(jobs):
        if overwrite or not os.path.exists(dst):
            convert_label_png(src, dst, label_map=label_map)
            written += 1
        if (i + 1) % _PROGRESS_EVERY == 0:
            logger.info("Converted %d/%d label files", i + 1, len(jobs))
    return written, len(jobs) - written

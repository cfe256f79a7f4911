"""Writing segmentation results the way the inference tools do (no detectron2, no torch).

``tools/demo.py`` and ``tools/infer_onnx.py`` write, per image ``<stem>``:

* ``<stem>_overlay.png``: the prediction drawn over the image with a legend of the classes
  (:func:`dinov3_m2f.data.visualize.draw_overlay`); an image larger than ``OVERLAY_MAX_SIZE``
  (2048) pixels a side is drawn on a downsampled copy (area-averaged image, nearest labels);
* ``<stem>_labels.png``: the class ids as a single-channel 8-bit PNG.

:func:`segment_image_files` is their loop over the input files: read (``data.image.read_image``),
segment, write. A file that cannot be read or segmented (unreadable, too large for the model's
test mode, out of memory, ...) is skipped with an error naming it; the others go on.
"""
import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..atomic_files import atomic_open
from .image import UnreadableImageError, read_image, read_image_header
from .masks import IGNORE_VALUE, write_label_png
from .visualize import OVERLAY_MAX_SIZE, class_colors, downsample_for_overlay, draw_overlay

logger = logging.getLogger(__name__)

__all__ = [
    "ImageTooLargeError",
    "LABELS_SUFFIX",
    "OVERLAY_SUFFIX",
    "check_label_png_classes",
    "segment_image_files",
    "write_segmentation",
]

OVERLAY_SUFFIX = "_overlay.png"
LABELS_SUFFIX = "_labels.png"
# Label PNGs are uint8 and IGNORE_VALUE (255) is reserved: class ids 0..254.
MAX_LABEL_PNG_CLASSES = IGNORE_VALUE


class ImageTooLargeError(ValueError):
    """An image over the pixel limit of the chosen test mode (raised before it is decoded)."""


def check_label_png_classes(num_classes: int) -> None:
    """Raise when ``num_classes`` ids do not fit a uint8 label PNG (ids 0..254)."""
    if num_classes > MAX_LABEL_PNG_CLASSES:
        raise ValueError(
            f"{num_classes} classes do not fit the uint8 label PNG (at most {MAX_LABEL_PNG_CLASSES})"
        )


def write_segmentation(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    output_dir: str,
    stem: str,
    class_names: Sequence[str],
    colors: Optional[Sequence[Sequence[int]]] = None,
    alpha: float = 0.5,
    overlay_max_size: int = OVERLAY_MAX_SIZE,
) -> Tuple[str, str]:
    """Write ``<stem>_overlay.png`` and ``<stem>_labels.png`` into ``output_dir`` (atomically).

    Args:
        image: RGB uint8 [H, W, 3].
        labels: class ids [H, W] in 0..C-1.
        output_dir: existing output folder.
        stem: output name stem.
        class_names: the C class names.
        colors: C RGB colours, or None for :func:`~dinov3_m2f.data.visualize.class_colors`.
        alpha: overlay opacity.
        overlay_max_size: the overlay's longest side (the label PNG keeps the full size).

    Returns:
        (overlay path, labels path).
    """
    check_label_png_classes(len(class_names))
    colors = colors or class_colors(len(class_names))
    small_image, small_labels = downsample_for_overlay(image, labels, max_size=overlay_max_size)
    overlay = draw_overlay(small_image, small_labels, class_names=class_names, colors=colors, alpha=alpha)
    overlay_path = os.path.join(output_dir, stem + OVERLAY_SUFFIX)
    labels_path = os.path.join(output_dir, stem + LABELS_SUFFIX)
    with atomic_open(overlay_path, "wb", suffix=".png") as f:
        Image.fromarray(overlay).save(f, format="PNG")
    write_label_png(labels, labels_path)
    return overlay_path, labels_path


def segment_image_files(
    files: Sequence[str],
    segment: Callable[[np.ndarray], np.ndarray],
    *,
    output_dir: str,
    class_names: Sequence[str],
    colors: Optional[Sequence[Sequence[int]]] = None,
    alpha: float = 0.5,
    desc: str = "segment",
    max_pixels: Optional[int] = None,
    too_large_hint: str = "",
) -> List[str]:
    """Read each image, segment it and write its PNGs (:func:`write_segmentation`).

    A file that cannot be read or segmented is skipped with an error naming it (one failing
    image never aborts the batch); the skipped files are listed again at the end, and an error is
    logged when no file could be segmented.

    Args:
        files: image files; their name stems must differ (outputs are named after them).
        segment: RGB uint8 [H, W, 3] -> class ids [H, W].
        output_dir: output folder, created if needed.
        class_names: the C class names.
        colors: C RGB colours, or None for the default palette.
        alpha: overlay opacity.
        desc: progress bar label.
        max_pixels: images with more pixels (height x width, from the file header) are skipped
            before they are decoded, with ``too_large_hint`` in the message; None: no limit.
        too_large_hint: what to do about a too large image.

    Returns:
        The skipped files.
    """
    check_label_png_classes(len(class_names))
    os.makedirs(output_dir, exist_ok=True)
    skipped: List[str] = []
    for path in tqdm(files, desc=desc, unit="image", disable=len(files) == 1):
        try:
            if max_pixels is not None:
                height, width = read_image_header(path).displayed_size
                if height * width > max_pixels:
                    raise ImageTooLargeError(f"{path} is {height}x{width} = {height * width} pixels, over the "
                                             f"{max_pixels} of this test mode; {too_large_hint}")
            image = read_image(path)
            stem = os.path.splitext(os.path.basename(path))[0]
            write_segmentation(image, segment(image), output_dir=output_dir, stem=stem,
                               class_names=class_names, colors=colors, alpha=alpha)
        except UnreadableImageError as e:
            logger.warning("Skipping %s: %s", path, e)
            skipped.append(path)
        except Exception as e:  # one bad image must not stop the batch; reported below
            logger.error("Skipping %s: %s: %s", path, type(e).__name__, e)
            skipped.append(path)
    logger.info("Segmented %d of %d images into %s", len(files) - len(skipped), len(files), output_dir)
    if skipped:
        logger.warning("Skipped %d unreadable or failing file(s): %s", len(skipped), ", ".join(skipped))
    if len(skipped) == len(files):
        logger.error("No image could be segmented")
    return skipped

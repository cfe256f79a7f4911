"""Writing segmentation results the way the inference tools do (no detectron2, no torch).

``tools/demo.py`` and ``tools/infer_onnx.py`` write, per image ``<stem>``:

* ``<stem>_overlay.png``: the prediction drawn over the image with a legend of the classes
  (:func:`dinov3_m2f.data.visualize.draw_overlay`);
* ``<stem>_labels.png``: the class ids as a single-channel 8-bit PNG.

:func:`segment_image_files` is their loop over the input files: read (``data.image.read_image``),
segment, write; unreadable files are skipped with a warning naming them.
"""
import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..atomic_files import atomic_open
from .image import UnreadableImageError, read_image
from .masks import IGNORE_VALUE, write_label_png
from .visualize import class_colors, draw_overlay

logger = logging.getLogger(__name__)

__all__ = [
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

    Returns:
        (overlay path, labels path).
    """
    check_label_png_classes(len(class_names))
    colors = colors or class_colors(len(class_names))
    overlay = draw_overlay(image, labels, class_names=class_names, colors=colors, alpha=alpha)
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
) -> List[str]:
    """Read each image, segment it and write its PNGs (:func:`write_segmentation`).

    A file that cannot be read is skipped with a warning naming it; the skipped files are listed
    again at the end, and an error is logged when no file could be read.

    Args:
        files: image files; their name stems must differ (outputs are named after them).
        segment: RGB uint8 [H, W, 3] -> class ids [H, W].
        output_dir: output folder, created if needed.
        class_names: the C class names.
        colors: C RGB colours, or None for the default palette.
        alpha: overlay opacity.
        desc: progress bar label.

    Returns:
        The skipped files.
    """
    check_label_png_classes(len(class_names))
    os.makedirs(output_dir, exist_ok=True)
    skipped: List[str] = []
    for path in tqdm(files, desc=desc, unit="image", disable=len(files) == 1):
        try:
            image = read_image(path)
        except UnreadableImageError as e:
            logger.warning("Skipping %s: %s", path, e)
            skipped.append(path)
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        write_segmentation(image, segment(image), output_dir=output_dir, stem=stem,
                           class_names=class_names, colors=colors, alpha=alpha)
    logger.info("Segmented %d of %d images into %s", len(files) - len(skipped), len(files), output_dir)
    if skipped:
        logger.warning("Skipped %d unreadable file(s): %s", len(skipped), ", ".join(skipped))
    if len(skipped) == len(files):
        logger.error("No image could be read")
    return skipped

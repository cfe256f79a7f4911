"""Drawing and writing semantic segmentation results (no detectron2, no torch).

The inference tools (``tools/demo.py``, ``tools/infer_onnx.py``) write, per image ``<stem>``:

* ``<stem>_overlay.png``: the image with every class region tinted in its colour and the class
  name written on its largest region;
* ``<stem>_labels.png``: the class ids as a single-channel 8-bit PNG.
"""
import colorsys
import logging
import os
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from ..utils import atomic_open
from .io import IGNORE_VALUE, write_label_png

logger = logging.getLogger(__name__)

__all__ = [
    "LABELS_SUFFIX",
    "OVERLAY_SUFFIX",
    "check_label_png_classes",
    "default_class_colors",
    "draw_sem_seg",
    "write_segmentation",
]

OVERLAY_SUFFIX = "_overlay.png"
LABELS_SUFFIX = "_labels.png"
# Label PNGs are uint8 and IGNORE_VALUE (255) is reserved: class ids 0..254.
MAX_LABEL_PNG_CLASSES = IGNORE_VALUE
# Hue step of the default palette: the golden-ratio conjugate spreads any number of hues evenly.
_HUE_STEP = 0.618033988749895
_PALETTE_SATURATION = 0.75
_PALETTE_VALUE = 0.95
# A class name is written on its largest region when that covers this fraction of the image.
MIN_NAMED_REGION_FRACTION = 0.005
# Font scale = image short side / this, at least _MIN_FONT_SCALE (cv2 Hershey font).
_FONT_SCALE_DIVISOR = 800.0
_MIN_FONT_SCALE = 0.35
_TEXT_COLOR = (255, 255, 255)
_TEXT_OUTLINE_COLOR = (0, 0, 0)
_RGB_CHANNELS = 3


def default_class_colors(num_classes: int) -> np.ndarray:
    """A fixed palette of well-separated colours.

    Args:
        num_classes: number of colours C.

    Returns:
        uint8 [C, 3] RGB; the same for every call.
    """
    hues = (np.arange(num_classes) * _HUE_STEP) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, _PALETTE_SATURATION, _PALETTE_VALUE) for h in hues]
    return np.round(np.array(rgb, dtype=np.float64).reshape(-1, 3) * 255).astype(np.uint8)


def _class_colors(num_classes: int, colors: Optional[Sequence[Sequence[int]]]) -> np.ndarray:
    if colors is None:
        return default_class_colors(num_classes)
    table = np.asarray(colors, dtype=np.int64)
    if table.shape != (num_classes, _RGB_CHANNELS) or table.min() < 0 or table.max() > 255:
        raise ValueError(
            f"colors must be {num_classes} RGB triples in 0..255, got an array of shape {table.shape}"
        )
    return table.astype(np.uint8)


def _draw_name(canvas: np.ndarray, mask: np.ndarray, name: str, min_area: float) -> None:
    """Write ``name`` centred on the largest connected region of ``mask``, if it is large enough."""
    count, components, stats, centroids = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if count < 2:  # component 0 is the background
        return
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_area:
        return
    scale = max(min(canvas.shape[:2]) / _FONT_SCALE_DIVISOR, _MIN_FONT_SCALE)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), _ = cv2.getTextSize(name, font, scale, 1)
    x = int(centroids[largest][0] - text_w / 2)
    y = int(centroids[largest][1] + text_h / 2)
    cv2.putText(canvas, name, (x, y), font, scale, _TEXT_OUTLINE_COLOR, 3, cv2.LINE_AA)
    cv2.putText(canvas, name, (x, y), font, scale, _TEXT_COLOR, 1, cv2.LINE_AA)


def draw_sem_seg(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Optional[Sequence[str]] = None,
    colors: Optional[Sequence[Sequence[int]]] = None,
    num_classes: Optional[int] = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Tint every class region of ``image`` in its colour and write the class names.

    Args:
        image: RGB uint8 [H, W, 3].
        labels: class ids [H, W]; ids outside 0..C-1 (e.g. the ignore value) are not drawn.
        class_names: C names written on the regions, or None for no text.
        colors: C RGB colours, or None for :func:`default_class_colors`.
        num_classes: C when neither names nor colours give it.
        alpha: opacity of the colours, in [0, 1].

    Returns:
        The overlay, RGB uint8 [H, W, 3].
    """
    if image.ndim != 3 or image.shape[2] != _RGB_CHANNELS or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    sizes = {len(x) for x in (class_names, colors) if x is not None} | ({num_classes} - {None})
    if len(sizes) != 1:
        raise ValueError(
            f"give the number of classes through class_names, colors or num_classes, consistently; got {sorted(sizes)}"
        )
    (count,) = sizes
    table = _class_colors(count, colors)
    drawn = (labels >= 0) & (labels < count)  # [H, W]
    tint = table[np.where(drawn, labels, 0)]  # [H, W, 3]
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * tint.astype(np.float32)
    canvas = np.where(drawn[..., None], np.round(blended), image).astype(np.uint8)
    if class_names is not None:
        min_area = MIN_NAMED_REGION_FRACTION * labels.size
        for class_id in np.unique(labels[drawn]):
            _draw_name(canvas, labels == class_id, class_names[class_id], min_area)
    return canvas


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
        colors: C RGB colours, or None for the default palette.
        alpha: overlay opacity.

    Returns:
        (overlay path, labels path).
    """
    check_label_png_classes(len(class_names))
    overlay = draw_sem_seg(image, labels, class_names=class_names, colors=colors, alpha=alpha)
    overlay_path = os.path.join(output_dir, stem + OVERLAY_SUFFIX)
    labels_path = os.path.join(output_dir, stem + LABELS_SUFFIX)
    with atomic_open(overlay_path, "wb", suffix=".png") as f:
        Image.fromarray(overlay).save(f, format="PNG")
    write_label_png(labels, labels_path)
    return overlay_path, labels_path

"""Drawing label maps over images, with a legend of class names (numpy + OpenCV, no detectron2).

:func:`draw_overlay` is the one overlay of the project: ``tools/demo.py`` draws predictions with
it and ``tools/check_dataset.py --visualize`` draws ground-truth masks, so that a user can see at a
glance whether masks line up with their images. Each class is blended in its colour, region
boundaries are drawn opaque (alignment faults show as edges that miss the objects), ignored
pixels are left as they are, and a legend panel on the right lists the classes present with their
ids and names.
"""
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["OVERLAY_MAX_SIZE", "class_colors", "downsample_for_overlay", "draw_overlay", "preview_shape",
           "sample_centres"]

# Longest side, in pixels, of the overlays written by the inference tools: larger images are
# drawn on a downsampled copy (the label PNGs keep the full size).
OVERLAY_MAX_SIZE = 2048

# Seed of the palette of datasets without official colours.
PALETTE_SEED = 0
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_FONT_THICKNESS = 1
_ROW_HEIGHT = 18  # legend pixels per class
_SWATCH = 12  # side of a legend colour square
_MARGIN = 6  # legend padding
_LEGEND_BACKGROUND = (255, 255, 255)
_TEXT_COLOR = (0, 0, 0)


def class_colors(num_classes: int, *, seed: int = PALETTE_SEED) -> List[Tuple[int, int, int]]:
    """A fixed pseudo-random RGB colour per class (for datasets without official colours).

    Args:
        num_classes: number of classes.
        seed: palette seed; the same seed always gives the same colours.

    Returns:
        ``num_classes`` (R, G, B) tuples of ints in 0..255.
    """
    rng = np.random.default_rng(seed)
    return [tuple(int(c) for c in rgb) for rgb in rng.integers(0, 256, size=(num_classes, 3))]


def preview_shape(height: int, width: int, max_size: int) -> Tuple[int, int]:
    """(h, w) of a copy whose longer side is at most ``max_size`` (never enlarged)."""
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def sample_centres(size: int, preview_size: int) -> np.ndarray:
    """int64 [preview_size]: the source index at the centre of each preview cell over ``size``."""
    return ((np.arange(preview_size) + 0.5) * size / preview_size).astype(np.int64)


def downsample_for_overlay(
    image: np.ndarray, labels: np.ndarray, *, max_size: int = OVERLAY_MAX_SIZE
) -> Tuple[np.ndarray, np.ndarray]:
    """The image (area average) and labels (nearest, at cell centres) at most ``max_size`` a side.

    Args:
        image: RGB uint8 [H, W, 3].
        labels: integer [H, W] class ids.
        max_size: longest side of the result; smaller inputs are returned as they are.

    Returns:
        (image [h, w, 3], labels [h, w]).
    """
    height, width = labels.shape
    preview_h, preview_w = preview_shape(height, width, max_size)
    if (preview_h, preview_w) == (height, width):
        return image, labels
    small = cv2.resize(image, (preview_w, preview_h), interpolation=cv2.INTER_AREA)
    rows, cols = sample_centres(height, preview_h), sample_centres(width, preview_w)
    return small, labels[np.ix_(rows, cols)]


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels whose right or lower neighbour has another label."""
    edges = np.zeros(labels.shape, dtype=bool)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edges


def _legend(
    entries: Sequence[Tuple[str, Optional[Tuple[int, int, int]]]], *, height: int
) -> np.ndarray:
    """uint8 [max(height, rows), W, 3] white panel: a colour square and a text per entry."""
    text_width = max(cv2.getTextSize(text, _FONT, _FONT_SCALE, _FONT_THICKNESS)[0][0] for text, _ in entries)
    width = 3 * _MARGIN + _SWATCH + text_width
    rows_height = 2 * _MARGIN + _ROW_HEIGHT * len(entries)
    panel = np.full((max(height, rows_height), width, 3), _LEGEND_BACKGROUND, dtype=np.uint8)
    for row, (text, color) in enumerate(entries):
        top = _MARGIN + row * _ROW_HEIGHT
        corner = (_MARGIN + _SWATCH - 1, top + _SWATCH - 1)
        if color is None:  # not coloured in the overlay: an outlined square
            cv2.rectangle(panel, (_MARGIN, top), corner, _TEXT_COLOR, thickness=1)
        else:
            cv2.rectangle(panel, (_MARGIN, top), corner, tuple(int(c) for c in color), thickness=cv2.FILLED)
        baseline = top + _SWATCH - 1
        cv2.putText(panel, text, (2 * _MARGIN + _SWATCH, baseline), _FONT, _FONT_SCALE, _TEXT_COLOR,
                    _FONT_THICKNESS, cv2.LINE_AA)
    return panel


def draw_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    ignore_value: int = 255,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a label map over its image and add a legend of the classes present.

    Args:
        image: RGB uint8 [H, W, 3].
        labels: integer [H, W] class ids; ``ignore_value`` (and any value outside the classes)
            is left uncoloured.
        class_names: name per class id.
        colors: RGB colour per class id (e.g. the dataset's ``stuff_colors`` or
            :func:`class_colors`).
        ignore_value: label of ignored pixels, listed in the legend as uncoloured.
        alpha: opacity of the class colours inside regions (boundaries are opaque).

    Returns:
        RGB uint8 [max(H, legend height), W + legend width, 3]: the overlay on the left (its
        first H rows and W columns line up with ``image``), the legend on the right.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} must have the image's height and width {image.shape[:2]}")
    if len(colors) != len(class_names):
        raise ValueError(f"{len(colors)} colors for {len(class_names)} class names")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    num_classes = len(class_names)
    palette = np.asarray(colors, dtype=np.float32).reshape(num_classes, 3)  # [C, 3]
    labelled = (labels >= 0) & (labels < num_classes)  # [H, W]
    ids = np.where(labelled, labels, 0)  # [H, W], safe index
    weight = np.where(labelled, np.float32(alpha), np.float32(0.0))[:, :, None]  # [H, W, 1] float32
    weight[_boundaries(labels) & labelled] = 1.0
    overlay = image.astype(np.float32) * (1.0 - weight) + palette[ids] * weight  # [H, W, 3] float32
    overlay = np.clip(np.rint(overlay), 0, 255).astype(np.uint8)

    present = np.unique(labels)
    entries = [(f"{c} {class_names[c]}", tuple(colors[c])) for c in present if 0 <= c < num_classes]
    unlabelled = [int(v) for v in present if not 0 <= v < num_classes]
    if unlabelled:
        shown = f"{ignore_value} ignore" if unlabelled == [ignore_value] else f"not a class: {unlabelled}"
        entries.append((f"{shown} (uncoloured)", None))
    legend = _legend(entries, height=image.shape[0])
    canvas = np.full((legend.shape[0], image.shape[1] + legend.shape[1], 3), _LEGEND_BACKGROUND, dtype=np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = overlay
    canvas[:, image.shape[1]:] = legend
    return canvas

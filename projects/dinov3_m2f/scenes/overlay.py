"""Overlays of large scenes, drawn on downsampled copies (bounded memory).

The labels are sampled block by block onto the preview grid (:class:`LabelPreview`: the label
at the centre of each preview pixel, nearest neighbour), the scene is read downsampled
(``Scene.preview``, area average), and :func:`~dinov3_m2f.data.visualize.draw_overlay` draws
the two at that size. Memory: the preview only, whatever the scene size.
"""
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..atomic_files import atomic_open
from ..data.masks import IGNORE_VALUE
from ..data.visualize import class_colors, draw_overlay, preview_shape, sample_centres

__all__ = ["LabelPreview", "write_overlay"]


class LabelPreview:
    """uint8 labels of a scene at preview size, filled block by block."""

    def __init__(self, height: int, width: int, *, max_size: int):
        preview_h, preview_w = preview_shape(height, width, max_size)
        self.rows, self.cols = sample_centres(height, preview_h), sample_centres(width, preview_w)
        self.labels = np.full((preview_h, preview_w), IGNORE_VALUE, dtype=np.uint8)

    def add(self, top: int, left: int, block: np.ndarray) -> None:
        """Sample the block's labels [h, w] at the preview pixels it holds."""
        row_sel = (self.rows >= top) & (self.rows < top + block.shape[0])
        col_sel = (self.cols >= left) & (self.cols < left + block.shape[1])
        rows, cols = self.rows[row_sel] - top, self.cols[col_sel] - left
        self.labels[np.ix_(row_sel, col_sel)] = block[np.ix_(rows, cols)]


def write_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    path: str,
    *,
    class_names: Optional[Sequence[str]],
    colors: Optional[Sequence[Sequence[int]]] = None,
    num_classes: int,
) -> None:
    """Draw ``labels`` [h, w] over ``image`` [h, w, 3] (same size) into the PNG ``path``, atomically.

    Args:
        image, labels: the downsampled scene and its labels.
        path: output PNG.
        class_names: class names (None: "class <id>" for ``num_classes`` classes).
        colors: RGB per class (None: the default palette).
        num_classes: the number of classes.
    """
    class_names = class_names or [f"class {i}" for i in range(num_classes)]
    colors = colors or class_colors(len(class_names))
    overlay = draw_overlay(image, labels, class_names=class_names, colors=colors)
    with atomic_open(path, "wb", suffix=".png") as f:
        Image.fromarray(overlay).save(f, format="PNG")

"""Sliding-window layout shared by the PyTorch inference and the ONNX runner (no torch import)."""
import math
from typing import List, Sequence, Tuple

__all__ = ["sliding_windows"]


def _window_starts(size: int, crop: int, stride: int) -> List[int]:
    """Window starts along one axis: every ``stride``, the last one flush with the end.

    Args:
        size: length of the axis.
        crop: window length (at most ``size``).
        stride: step between window starts.

    Returns:
        The start of every window; together the windows cover ``[0, size)``.
    """
    num_windows = max(math.ceil((size - crop) / stride), 0) + 1
    return [min(i * stride, size - crop) for i in range(num_windows)]


def sliding_windows(
    height: int, width: int, *, crop_size: Sequence[int], stride: Sequence[int]
) -> Tuple[Tuple[int, int], List[Tuple[int, int]]]:
    """The windows that cover a ``height`` x ``width`` image, row by row.

    Windows of ``crop_size`` start every ``stride`` pixels; the last window of each axis is shifted
    back to end at the image border. Along an axis where the image is smaller than the crop, the
    window is the whole axis (no padding).

    Args:
        height: image height H.
        width: image width W.
        crop_size: (h_crop, w_crop) window size, each > 0.
        stride: (h_stride, w_stride), each in [1, crop size].

    Returns:
        ((h, w) of every window, the (top, left) corner of each window).
    """
    if len(crop_size) != 2 or len(stride) != 2 or any(c <= 0 for c in crop_size) or any(
        not 0 < s <= c for s, c in zip(stride, crop_size)
    ):
        raise ValueError(
            f"need crop_size > 0 and 0 < stride <= crop_size (two values each), got "
            f"crop_size={crop_size}, stride={stride}"
        )
    crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
    rows, cols = _window_starts(height, crop_h, stride[0]), _window_starts(width, crop_w, stride[1])
    return (crop_h, crop_w), [(y, x) for y in rows for x in cols]

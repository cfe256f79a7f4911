"""Sliding-window layout shared by the PyTorch inference and the ONNX runner (no torch import)."""
import math
from typing import List

__all__ = ["window_starts"]


def window_starts(size: int, crop: int, stride: int) -> List[int]:
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

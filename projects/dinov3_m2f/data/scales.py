"""The short-edge lengths of multi-scale training (the augmentations themselves are detectron2's,
listed in ``configs/common/data/sem_seg.py``)."""
from typing import List

__all__ = ["scaled_lengths"]


def scaled_lengths(base: int, *, min_ratio: float = 0.5, max_ratio: float = 2.0,
                   step: float = 0.1) -> List[int]:
    """Short-edge lengths ``base * r`` for ``r`` in ``min_ratio, min_ratio + step, ... max_ratio``.

    Args:
        base: reference length (usually the crop size).
        min_ratio, max_ratio: ratio range, both included.
        step: ratio step.

    Returns:
        Increasing list of ints (e.g. base 512 -> 256, 307, ..., 1024).
    """
    if base <= 0 or step <= 0 or not 0 < min_ratio <= max_ratio:
        raise ValueError(
            f"need base > 0, step > 0 and 0 < min_ratio <= max_ratio; got base={base}, "
            f"step={step}, min_ratio={min_ratio}, max_ratio={max_ratio}"
        )
    num = int(round((max_ratio - min_ratio) / step)) + 1
    return [int(base * (min_ratio + i * step)) for i in range(num)]

"""Sliding-window inference over a scene of any size, block by block, in bounded memory.

:func:`blockwise_slide_inference` computes the scores of :func:`.semantic_inference.slide_inference`
(the same windows, each pixel's score the mean over the windows covering it) without holding the
scene or its score map: the output is cut into blocks of ``block_size``, and each block is
yielded, finished, as soon as every window overlapping it has run.

Order and memory:

* Blocks are yielded in raster order. One block row at a time, the windows overlapping that row
  run column by column (window left edge, then top edge), ``slide_batch`` at a time; a block is
  finished once the next window starts right of it. At most ``ceil(crop_w / block_w) + 1`` blocks
  are open at once, each ``C x block_h x block_w`` float32 scores plus a count map, so peak
  memory depends on the window, the classes and the block size, never on the scene size.
* Input pixels are read window by window through ``read_window``, so the scene is never loaded.
* Cost: a window crossing a block-row boundary runs once for each block row it overlaps (its
  scores are not kept for the next row, which would take memory proportional to the scene
  width). :func:`count_window_runs` gives the number of runs: about ``crop_h / block_h`` more
  than the in-memory slide inference (7 % with the default 8192-row blocks and 512/341
  windows). Tall, narrow blocks therefore cost the least for a given memory: the open blocks
  take about ``C x block_h x (crop_w + 2 block_w)`` floats, the extra windows ``crop_h / block_h``.
"""
import logging
import math
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import torch

from ..windows import sliding_windows
from .semantic_inference import check_slide_batch

__all__ = ["DEFAULT_BLOCK_SIZE", "ScoreBlock", "blockwise_slide_inference", "block_rows",
           "count_window_runs"]

logger = logging.getLogger(__name__)

# Output block (rows, columns): tall and narrow (see the module docstring). With 512-wide windows
# two blocks are open, 2 x 8192 x 512 float32 = 32 MiB per class; multiples of the GeoTIFF tile
# (256) so that each tile is written once.
DEFAULT_BLOCK_SIZE = (8192, 512)

# (top, left, scores [C, h, w]): one finished output block.
ScoreBlock = Tuple[int, int, torch.Tensor]
# read_window(top, left, height, width) -> image crop [3, height, width] as predict expects it.
WindowReader = Callable[[int, int, int, int], torch.Tensor]


def _check_block_size(block_size: Sequence[int]) -> Tuple[int, int]:
    if len(block_size) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                                   for b in block_size):
        raise ValueError(f"block_size must be two positive ints (rows, columns), got {block_size!r}")
    return int(block_size[0]), int(block_size[1])


def block_rows(height: int, block_h: int) -> List[Tuple[int, int]]:
    """The (first row, end row) of every block row of a scene ``height`` rows high."""
    return [(top, min(top + block_h, height)) for top in range(0, height, block_h)]


def _row_windows(windows: List[Tuple[int, int]], crop_h: int, top: int, bottom: int) -> List[Tuple[int, int]]:
    """Windows overlapping rows [top, bottom), ordered by left edge, then top edge."""
    return sorted(((y, x) for y, x in windows if y < bottom and y + crop_h > top), key=lambda w: (w[1], w[0]))


def count_window_runs(
    height: int, width: int, *, crop_size: Sequence[int], stride: Sequence[int],
    block_size: Sequence[int] = DEFAULT_BLOCK_SIZE,
) -> Tuple[int, int]:
    """(windows of the in-memory slide inference, window runs of the block-wise one)."""
    block_h, _ = _check_block_size(block_size)
    (crop_h, _), windows = sliding_windows(height, width, crop_size=crop_size, stride=stride)
    runs = sum(len(_row_windows(windows, crop_h, top, bottom)) for top, bottom in block_rows(height, block_h))
    return len(windows), runs


class _OpenBlocks:
    """Score sums and window counts of the open blocks of one block row."""

    def __init__(self, *, top: int, bottom: int, width: int, block_w: int, num_classes: int,
                 device: torch.device):
        self.top, self.bottom, self.width, self.block_w = top, bottom, width, block_w
        self.num_classes, self.device = num_classes, device
        self.sums: Dict[int, torch.Tensor] = {}  # block column -> [C, h, w]
        self.counts: Dict[int, torch.Tensor] = {}  # block column -> [h, w]
        self.next_column = 0  # the next block column to yield

    def _allocate(self, column: int) -> None:
        left = column * self.block_w
        shape = (self.bottom - self.top, min(left + self.block_w, self.width) - left)
        self.sums[column] = torch.zeros((self.num_classes, *shape), dtype=torch.float32, device=self.device)
        self.counts[column] = torch.zeros(shape, dtype=torch.float32, device=self.device)

    def add(self, y: int, x: int, scores: torch.Tensor) -> None:
        """Add one window's scores [C, crop_h, crop_w] (top-left at (y, x)) to the blocks it overlaps."""
        crop_h, crop_w = scores.shape[-2:]
        rows = slice(max(y, self.top) - y, min(y + crop_h, self.bottom) - y)  # window rows in this block row
        for column in range(x // self.block_w, (x + crop_w - 1) // self.block_w + 1):
            if column not in self.sums:
                self._allocate(column)
            left = column * self.block_w
            first, end = max(x, left), min(x + crop_w, left + self.block_w)
            out_rows = slice(rows.start + y - self.top, rows.stop + y - self.top)
            self.sums[column][:, out_rows, first - left : end - left] += scores[:, rows, first - x : end - x]
            self.counts[column][out_rows, first - left : end - left] += 1.0

    def finished(self, next_left: int) -> Iterator[ScoreBlock]:
        """Yield (and forget) the blocks that end at or before column ``next_left``, in order."""
        while self.next_column in self.sums and (self.next_column + 1) * self.block_w <= next_left:
            column = self.next_column
            scores = self.sums.pop(column).div_(self.counts.pop(column))  # mean, in place
            self.next_column += 1
            yield self.top, column * self.block_w, scores
            del scores  # the caller holds the block now


def blockwise_slide_inference(
    predict: Callable[[torch.Tensor], torch.Tensor],
    read_window: WindowReader,
    *,
    image_size: Tuple[int, int],
    crop_size: Tuple[int, int],
    stride: Tuple[int, int],
    num_classes: int,
    block_size: Tuple[int, int] = DEFAULT_BLOCK_SIZE,
    slide_batch: int = 1,
    device: torch.device = torch.device("cpu"),
) -> Iterator[ScoreBlock]:
    """Sliding-window scores of one scene, yielded block by block in raster order.

    Args:
        predict: images [k, 3, h, w] -> scores [k, num_classes, h, w].
        read_window: (top, left, height, width) -> one crop [3, height, width] of the scene, in
            the form ``predict`` takes.
        image_size: (H, W) of the scene.
        crop_size: (h_crop, w_crop) window size.
        stride: (h_stride, w_stride), each in [1, crop size].
        num_classes: C, the number of score channels.
        block_size: (rows, columns) of an output block; the last block of each axis is smaller
            when it does not divide the scene.
        slide_batch: windows per ``predict`` call.
        device: where the open blocks are kept.

    Yields:
        (top, left, scores [C, h, w] float32): the mean scores of a finished block, equal to
        the same pixels of ``slide_inference`` up to float rounding.
    """
    check_slide_batch(slide_batch)
    block_h, block_w = _check_block_size(block_size)
    height, width = image_size
    (crop_h, crop_w), windows = sliding_windows(height, width, crop_size=crop_size, stride=stride)
    for top, bottom in block_rows(height, block_h):
        row_windows = _row_windows(windows, crop_h, top, bottom)
        blocks = _OpenBlocks(top=top, bottom=bottom, width=width, block_w=block_w,
                             num_classes=num_classes, device=device)
        for first in range(0, len(row_windows), slide_batch):
            group = row_windows[first : first + slide_batch]
            crops = torch.stack([read_window(y, x, crop_h, crop_w) for y, x in group])  # [k, 3, crop_h, crop_w]
            scores = predict(crops.to(device))  # [k, C, crop_h, crop_w]
            expected = (len(group), num_classes, crop_h, crop_w)
            if tuple(scores.shape) != expected:
                raise ValueError(f"predict returned shape {tuple(scores.shape)}; expected {expected}")
            for (y, x), window_scores in zip(group, scores.float()):
                blocks.add(y, x, window_scores)
            following = first + slide_batch
            next_left = row_windows[following][1] if following < len(row_windows) else math.inf
            yield from blocks.finished(next_left)

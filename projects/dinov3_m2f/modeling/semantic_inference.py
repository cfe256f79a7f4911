"""Semantic-segmentation inference for Mask2Former outputs: whole image, sliding window, TTA.

``semantic_probs`` turns the set prediction into a per-class score map
(``softmax(class)[..., :-1]`` weighted sum of ``sigmoid(mask)``). The other functions take a
callable ``predict(images [B, 3, h, w]) -> scores [B, C, h, w]`` (scores at the input
resolution), so they work for any model; whole-image inference is ``predict(images)`` itself.
They compose: ``tta_inference(lambda x: slide_inference(predict, x, ...), images, ...)``
reproduces the official DINOv3 evaluation (slide per TTA view, views averaged).
"""
import logging
import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..windows import sliding_windows

__all__ = ["check_slide_batch", "semantic_probs", "slide_inference", "tta_inference"]

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


def semantic_probs(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    *,
    output_size: Optional[Tuple[int, int]] = None,
) -> torch.Tensor:
    """Per-class scores from class logits and mask logits, in float32.

    Args:
        pred_logits: [B, Q, C + 1] class logits (last entry = no-object).
        pred_masks: [B, Q, h, w] mask logits.
        output_size: optional (H, W); the mask logits are resized to it (bilinear,
            ``align_corners=False``) before the sigmoid, as Mask2Former does.

    Returns:
        [B, C, h, w] (or [B, C, H, W]) scores: sum over queries of p(class) * sigmoid(mask).
    """
    if pred_logits.dim() != 3 or pred_masks.dim() != 4 or pred_logits.shape[:2] != pred_masks.shape[:2]:
        raise ValueError(
            f"expected pred_logits [B, Q, C+1] and pred_masks [B, Q, h, w], got "
            f"{tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}"
        )
    mask_logits = pred_masks.float()
    if output_size is not None:
        mask_logits = F.interpolate(mask_logits, size=output_size, mode="bilinear", align_corners=False)
    class_probs = pred_logits.float().softmax(-1)[..., :-1]  # [B, Q, C]
    return torch.einsum("bqc,bqhw->bchw", class_probs, mask_logits.sigmoid())


def _check_prediction(scores: torch.Tensor, images: torch.Tensor, num_classes: Optional[int]) -> None:
    """Raise if ``predict`` returned scores of the wrong shape for ``images``."""
    expected_channels = scores.shape[1] if num_classes is None else num_classes
    expected = (images.shape[0], expected_channels, images.shape[2], images.shape[3])
    if scores.dim() != 4 or tuple(scores.shape) != expected:
        raise ValueError(
            f"predict returned shape {tuple(scores.shape)} for input {tuple(images.shape)}; "
            f"expected {expected}"
        )


def check_slide_batch(slide_batch: int) -> None:
    """Raise ValueError unless ``slide_batch`` (windows per predict call) is a positive int."""
    if isinstance(slide_batch, bool) or not isinstance(slide_batch, int) or slide_batch < 1:
        raise ValueError(f"slide_batch must be a positive int (windows per predict call), got {slide_batch!r}")


def slide_inference(
    predict: Predictor,
    images: torch.Tensor,
    *,
    crop_size: Tuple[int, int],
    stride: Tuple[int, int],
    num_classes: int,
    slide_batch: int = 1,
) -> torch.Tensor:
    """Sliding-window inference: average the scores of overlapping crops.

    The windows are :func:`dinov3_m2f.windows.sliding_windows`: every ``stride`` pixels, the last
    one of each axis shifted back to end at the image border, so every pixel is covered. Each
    pixel's score is the mean over the windows covering it. Along an axis where the image is
    smaller than the crop, the window is the whole axis (no padding here): ``predict`` then
    receives a smaller crop and must accept it (padding to its size divisibility is the
    predictor's job).

    ``slide_batch`` windows (all of one size) go through ``predict`` together, concatenated along
    the batch axis: faster on a GPU, at the cost of ``slide_batch`` times the activation memory of
    one window (``docs/benchmarks.md``). The scores do not depend on it beyond float rounding.

    Args:
        predict: images [B', 3, h, w] -> scores [B', num_classes, h, w].
        images: [B, 3, H, W] images (any H, W).
        crop_size: (h_crop, w_crop) window size.
        stride: (h_stride, w_stride), each in [1, crop size].
        num_classes: C, the number of score channels.
        slide_batch: windows per ``predict`` call (``predict`` gets ``B * slide_batch`` crops,
            window-major: the B images of the first window, then of the second, ...).

    Returns:
        [B, C, H, W] float32 scores on the device of ``images``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    check_slide_batch(slide_batch)
    batch, _, height, width = images.shape
    (crop_h, crop_w), windows = sliding_windows(height, width, crop_size=crop_size, stride=stride)
    scores = images.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    counts = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for first in range(0, len(windows), slide_batch):
        group = windows[first : first + slide_batch]
        crops = torch.cat([images[:, :, y : y + crop_h, x : x + crop_w] for y, x in group])  # [k*B, 3, crop_h, crop_w]
        crop_scores = predict(crops)  # [k*B, C, crop_h, crop_w]
        _check_prediction(crop_scores, crops, num_classes)
        for (y, x), window_scores in zip(group, crop_scores.split(batch)):
            scores[:, :, y : y + crop_h, x : x + crop_w] += window_scores.float()
            counts[:, :, y : y + crop_h, x : x + crop_w] += 1.0
    return scores / counts


def _scaled_size(size: int, scale: float, size_divisibility: int) -> int:
    """``size * scale`` rounded to the nearest integer, then up to a multiple of size_divisibility."""
    scaled = max(int(size * scale + 0.5), 1)
    if size_divisibility > 1:
        scaled = math.ceil(scaled / size_divisibility) * size_divisibility
    return scaled


def tta_inference(
    predict: Predictor,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    size_divisibility: int = 32,
) -> torch.Tensor:
    """Test-time augmentation: multi-scale and horizontal-flip views, scores averaged.

    For every scale, the images are resized (bilinear, ``align_corners=False``) to
    ``(round(H * s), round(W * s))``, each side rounded up to a multiple of
    ``size_divisibility`` (0 or 1 = no rounding; so with the default the 1.0 view of an image
    whose sides are not multiples of 32 is slightly stretched). With ``flip``, the horizontally
    flipped view is predicted too and its scores flipped back. Every view's scores are resized
    back to (H, W) (bilinear) and the views averaged with equal weight.

    Args:
        predict: images [B, 3, h, w] -> scores [B, C, h, w].
        images: [B, 3, H, W] images.
        scales: resize ratios, e.g. (0.9, 0.95, 1.0, 1.05, 1.1).
        flip: also predict the horizontally flipped images.
        size_divisibility: round each resized side up to a multiple of this.

    Returns:
        [B, C, H, W] float32 averaged scores.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if len(scales) == 0 or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive ratios, got {scales}")
    if size_divisibility < 0:
        raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
    height, width = images.shape[-2:]
    total: Optional[torch.Tensor] = None
    num_views = 0
    for scale in scales:
        size = (_scaled_size(height, scale, size_divisibility), _scaled_size(width, scale, size_divisibility))
        resized = images
        if size != (height, width):
            resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            view = resized.flip(-1) if flipped else resized
            view_scores = predict(view)  # [B, C, h_s, w_s]
            _check_prediction(view_scores, view, None)
            view_scores = view_scores.float()
            if flipped:
                view_scores = view_scores.flip(-1)
            if size != (height, width):
                view_scores = F.interpolate(
                    view_scores, size=(height, width), mode="bilinear", align_corners=False
                )
            total = view_scores if total is None else total + view_scores
            num_views += 1
    return total / num_views

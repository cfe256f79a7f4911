"""Point sampling for the mask losses and the matcher (PointRend-style, plain PyTorch).

Masks are compared at a set of points in normalized image coordinates ``(x, y)`` in
``[0, 1] x [0, 1]`` rather than on full grids, so predictions (1/4 resolution) and targets (full
resolution) can be compared without resizing. ``grid_sample`` with ``align_corners=False``
maps ``x = 0`` to the left edge of the first pixel and ``x = 1`` to the right edge of the last.

Validity of a point: a point counts as valid only when every pixel that bilinear sampling reads
for it (the 2 x 2 neighbourhood, clamped at the image border) is valid. A point next to an ignore
or padding pixel is therefore invalid, so, for predictions at the target resolution, the value of
a prediction at ignore pixels cannot reach any counted point.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["point_sample", "sample_valid_points", "logit_uncertainty", "sample_uncertain_points"]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bilinearly sample feature maps at normalized points.

    Args:
        input: [N, C, H, W] feature maps.
        point_coords: [N, P, 2] points ``(x, y)`` in ``[0, 1]``.
        **kwargs: passed to ``torch.nn.functional.grid_sample``; ``align_corners`` defaults to
            False.

    Returns:
        [N, C, P] sampled values.
    """
    if input.dim() != 4:
        raise ValueError(f"input must have shape [N, C, H, W], got {tuple(input.shape)}")
    if point_coords.dim() != 3 or point_coords.shape[-1] != 2:
        raise ValueError(f"point_coords must have shape [N, P, 2], got {tuple(point_coords.shape)}")
    kwargs.setdefault("align_corners", False)
    grid = (2.0 * point_coords - 1.0).to(input.dtype)[:, :, None, :]  # [N, P, 1, 2] in [-1, 1]
    return F.grid_sample(input, grid, **kwargs)[..., 0]  # [N, C, P]


def sample_valid_points(valid: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """Validity of each point: True only if all its bilinear taps are valid pixels.

    The taps are the pixels ``grid_sample(align_corners=False)`` reads for the point; taps
    outside the image are clamped to the border pixel.

    Args:
        valid: [N, H, W] bool map (False at ignore / padding pixels).
        point_coords: [N, P, 2] points ``(x, y)`` in ``[0, 1]``.

    Returns:
        [N, P] bool.
    """
    if valid.dim() != 3:
        raise ValueError(f"valid must have shape [N, H, W], got {tuple(valid.shape)}")
    n, h, w = valid.shape
    # Continuous pixel coordinates whose integer values are pixel centres.
    x = point_coords[..., 0].float() * w - 0.5  # [N, P]
    y = point_coords[..., 1].float() * h - 0.5  # [N, P]
    x0 = torch.floor(x).long()
    y0 = torch.floor(y).long()
    flat = valid.reshape(n, h * w)
    result = torch.ones(x0.shape, dtype=torch.bool, device=valid.device)  # [N, P]
    for dy in (0, 1):
        for dx in (0, 1):
            xi = (x0 + dx).clamp(0, w - 1)
            yi = (y0 + dy).clamp(0, h - 1)
            result &= torch.gather(flat, 1, yi * w + xi)
    return result


def logit_uncertainty(point_logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of single-channel mask logits: ``-|logit|`` (highest at the decision boundary).

    Args:
        point_logits: [N, 1, P] sampled logits.

    Returns:
        [N, P] uncertainty scores.
    """
    if point_logits.dim() != 3 or point_logits.shape[1] != 1:
        raise ValueError(f"point_logits must have shape [N, 1, P], got {tuple(point_logits.shape)}")
    return -point_logits[:, 0].abs()


def sample_uncertain_points(
    logits: torch.Tensor,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Importance sampling of points where the prediction is most uncertain.

    ``int(num_points * oversample_ratio)`` uniform candidates are drawn per map; the
    ``int(importance_sample_ratio * num_points)`` most uncertain are kept and the rest of the
    ``num_points`` are fresh uniform points. Draws from the global torch RNG.

    Args:
        logits: [N, C, H, W] prediction logits.
        uncertainty_fn: maps sampled logits [N, C, P'] to uncertainty scores [N, P'].
        num_points: number of points P per map.
        oversample_ratio: >= 1, candidate pool size relative to ``num_points``.
        importance_sample_ratio: in [0, 1], share of points chosen by uncertainty.
        valid: optional [N, H', W'] bool map at any resolution; candidates that are invalid
            (see :func:`sample_valid_points`) are chosen by importance only when there are not
            enough valid candidates.

    Returns:
        [N, P, 2] points ``(x, y)`` in ``[0, 1]``, on the device of ``logits``.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    if num_points <= 0:
        raise ValueError(f"num_points must be positive, got {num_points}")
    n = logits.shape[0]
    device = logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(n, num_candidates, 2, device=device)  # [N, P', 2]
    # Uncertainty must come from logits sampled at the candidates, not from a coarse uncertainty
    # map sampled afterwards: bilinear interpolation of |logit| is not |interpolated logit|.
    uncertainty = uncertainty_fn(point_sample(logits, candidates)).float()  # [N, P']
    if valid is not None:
        candidate_valid = sample_valid_points(valid, candidates)  # [N, P']
        uncertainty = uncertainty.masked_fill(~candidate_valid, float("-inf"))
    top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices  # [N, num_uncertain]
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))  # [N, num_uncertain, 2]
    if num_random == 0:
        return chosen
    uniform = torch.rand(n, num_random, 2, device=device)  # [N, num_random, 2]
    return torch.cat([chosen, uniform], dim=1)

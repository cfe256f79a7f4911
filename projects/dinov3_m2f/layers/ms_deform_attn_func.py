"""Multi-scale deformable attention: functional API over the compiled op and a PyTorch reference.

Shapes (B batch, S = sum_l H_l * W_l value tokens, Q queries, M heads, C channels per head,
L levels, P points per level and head):
    value               [B, S, M, C]
    spatial_shapes      [L, 2] int64, (H_l, W_l) of each level
    level_start_index   [L] int64, offset of each level in the S axis
    sampling_locations  [B, Q, M, L, P, 2] as (x, y) in [0, 1] (outside -> zero padding)
    attention_weights   [B, Q, M, L, P]
    output              [B, Q, M * C]
"""
import logging
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _extension

logger = logging.getLogger(__name__)

__all__ = ["ms_deform_attn", "ms_deform_attn_pytorch", "MS_DEFORM_ATTN_IMPLS"]

MS_DEFORM_ATTN_IMPLS = ("auto", "compiled", "pytorch")


def _check_reference_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, heads, C], got shape {tuple(value.shape)}")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be [L, 2], got shape {tuple(spatial_shapes.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must be [B, Q, heads, L, P, 2], got shape "
            f"{tuple(sampling_locations.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights must be [B, Q, heads, L, P] = {tuple(sampling_locations.shape[:-1])}, "
            f"got shape {tuple(attention_weights.shape)}"
        )


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference implementation with ``F.grid_sample`` (slow and memory hungry; for tests and
    as a fallback when the compiled extension is missing).

    Args:
        value: [B, S, heads, C].
        spatial_shapes: [L, 2] int64 (H, W) per level.
        level_start_index: [L] int64; unused (levels are contiguous and in order), kept so the
            signature matches the compiled op.
        sampling_locations: [B, Q, heads, L, P, 2], (x, y) normalised to [0, 1].
        attention_weights: [B, Q, heads, L, P].

    Returns:
        Tensor: [B, Q, heads * C].
    """
    del level_start_index  # levels are split from spatial_shapes
    _check_reference_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    B, S, M, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    sizes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    if sum(h * w for h, w in sizes) != S:
        raise ValueError(f"spatial_shapes {sizes} do not add up to value's S={S}")
    value_levels = value.split([h * w for h, w in sizes], dim=1)
    # grid_sample uses [-1, 1] coordinates with align_corners=False
    grids = 2 * sampling_locations - 1  # [B, Q, M, L, P, 2]
    sampled = []
    for lvl, (h, w) in enumerate(sizes):
        # [B, h*w, M, C] -> [B*M, C, h, w]
        value_l = value_levels[lvl].permute(0, 2, 3, 1).reshape(B * M, C, h, w)
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B*M, C, Q, P]
    # [B, Q, M, L, P] -> [B*M, 1, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [B*M, C, Q]
    return output.view(B, M * C, Q).transpose(1, 2).contiguous()  # [B, Q, M*C]


class _MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of ``torch.ops.dinov3_m2f.ms_deform_attn_{forward,backward}``."""

    @staticmethod
    def forward(
        ctx,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
    ) -> torch.Tensor:
        output = torch.ops.dinov3_m2f.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        ctx.save_for_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        grad_value, grad_locations, grad_weights = torch.ops.dinov3_m2f.ms_deform_attn_backward(
            *ctx.saved_tensors, grad_output
        )
        return grad_value, None, None, grad_locations, grad_weights


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Multi-scale deformable attention (bilinear sampling, zero padding, weighted sum).

    Both implementations take float16, bfloat16, float32 and float64 on CPU and CUDA; the
    compiled op computes in float32 (float64 for float64 inputs) and returns ``value``'s dtype.

    Args:
        value: [B, S, heads, C] float tensor.
        spatial_shapes: [L, 2] int64 (H, W) per level; sum(H * W) == S.
        level_start_index: [L] int64 start of each level along S.
        sampling_locations: [B, Q, heads, L, P, 2] (x, y) in [0, 1]; same dtype as ``value``.
        attention_weights: [B, Q, heads, L, P]; same dtype as ``value``.
        impl: "compiled" (the C++/CUDA op; RuntimeError if the extension is not built),
            "pytorch" (grid_sample reference) or "auto" (compiled when available, otherwise
            the reference after a one-time warning).

    Returns:
        Tensor: [B, Q, heads * C].
    """
    if impl not in MS_DEFORM_ATTN_IMPLS:
        raise ValueError(f"impl must be one of {MS_DEFORM_ATTN_IMPLS}, got {impl!r}")
    if impl == "compiled":
        _extension.require("ms_deform_attn(impl='compiled')")
    elif impl == "pytorch" or not _extension.is_available():
        if impl == "auto":
            _extension.warn_missing_once("ms_deform_attn(impl='auto')")
        return ms_deform_attn_pytorch(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return _MSDeformAttnFunction.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def _fake_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    B, _, M, C = value.shape
    Q = sampling_locations.shape[1]
    return value.new_empty((B, Q, M * C))


def _fake_backward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.empty_like(value, memory_format=torch.contiguous_format),
        torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
        torch.empty_like(attention_weights, memory_format=torch.contiguous_format),
    )


if _extension.is_available():
    # Shape propagation for torch.compile / FakeTensor tracing of the C++ operators.
    torch.library.register_fake("dinov3_m2f::ms_deform_attn_forward", _fake_forward)
    torch.library.register_fake("dinov3_m2f::ms_deform_attn_backward", _fake_backward)

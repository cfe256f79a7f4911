"""Multi-scale deformable attention module (Deformable-DETR parameterisation)."""
import logging
import math
from typing import Optional

import torch
from torch import nn

from .ms_deform_attn_func import MS_DEFORM_ATTN_IMPLS, ms_deform_attn

logger = logging.getLogger(__name__)

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention.

    Each query predicts ``n_points`` sampling offsets and attention weights per head and level
    around its reference point; the output is the attention-weighted sum of bilinearly sampled
    value features, projected back to ``d_model``.

    Args:
        d_model: query / input feature dimension.
        n_levels: number of feature levels.
        n_heads: number of attention heads.
        n_points: sampling points per head and level.
        ratio: the value projection has ``int(d_model * ratio)`` channels (the DINOv3 adapter
            uses 0.5); it must be divisible by ``n_heads``.
        impl: implementation of the core op, see :func:`ms_deform_attn`.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        *,
        ratio: float = 1.0,
        impl: str = "auto",
    ):
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim <= 0 or value_dim % n_heads != 0:
            raise ValueError(
                f"int(d_model * ratio) = int({d_model} * {ratio}) = {value_dim} must be a positive "
                f"multiple of n_heads={n_heads}"
            )
        if impl not in MS_DEFORM_ATTN_IMPLS:
            raise ValueError(f"impl must be one of {MS_DEFORM_ATTN_IMPLS}, got {impl!r}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.ratio = ratio
        self.value_dim = value_dim
        self.impl = impl

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a per-head ring of directions (point k at distance k + 1 cells),
        attention is uniform, projections are Xavier-uniform with zero bias."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [M, 2]
        # scale so the larger coordinate is +-1: the first point lands on a neighbouring cell
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        point_scale = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # [P]
        grid = directions[:, None, None, :] * point_scale[None, None, :, None]  # [M, 1, P, 2]
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)  # [M, L, P, 2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: [B, Q, d_model].
            reference_points: [B, Q, n_levels, 2] (x, y) in [0, 1], (0, 0) the top-left corner.
            input_flatten: [B, S, d_model], the levels flattened and concatenated.
            input_spatial_shapes: [n_levels, 2] int64 (H, W) per level.
            input_level_start_index: [n_levels] int64 start of each level along S.
            input_padding_mask: [B, S] bool, True at padding tokens (their values are zeroed),
                or None.

        Returns:
            Tensor: [B, Q, d_model].
        """
        B, Q, _ = query.shape
        _, S, _ = input_flatten.shape
        if reference_points.shape != (B, Q, self.n_levels, 2):
            raise ValueError(
                f"reference_points must be [B, Q, n_levels, 2] = {(B, Q, self.n_levels, 2)}, "
                f"got {tuple(reference_points.shape)}"
            )
        if input_spatial_shapes.shape != (self.n_levels, 2):
            raise ValueError(
                f"input_spatial_shapes must be [n_levels, 2] = {(self.n_levels, 2)}, "
                f"got {tuple(input_spatial_shapes.shape)}"
            )

        value = self.value_proj(input_flatten)  # [B, S, value_dim]
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(B, S, self.n_heads, self.value_dim // self.n_heads)  # [B, S, M, C]

        offsets = self.sampling_offsets(query).view(
            B, Q, self.n_heads, self.n_levels, self.n_points, 2
        )  # [B, Q, M, L, P, 2]
        weights = self.attention_weights(query).view(B, Q, self.n_heads, -1).softmax(-1)
        weights = weights.view(B, Q, self.n_heads, self.n_levels, self.n_points)  # [B, Q, M, L, P]

        # offsets are in cells of each level: normalise by its (W, H), in the reference points'
        # dtype (under autocast the offsets are bfloat16, which rounds widths above 256)
        offset_normalizer = input_spatial_shapes.flip(-1).to(reference_points.dtype)  # [L, 2] as (W, H)
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / offset_normalizer[None, None, None, :, None, :]
        )  # [B, Q, M, L, P, 2]

        # the op needs one dtype; under autocast the locations may be wider than the values
        dtype = torch.promote_types(torch.promote_types(value.dtype, locations.dtype), weights.dtype)
        output = ms_deform_attn(
            value.to(dtype),
            input_spatial_shapes,
            input_level_start_index,
            locations.to(dtype),
            weights.to(dtype),
            impl=self.impl,
        )  # [B, Q, value_dim]
        return self.output_proj(output.to(query.dtype))  # [B, Q, d_model]

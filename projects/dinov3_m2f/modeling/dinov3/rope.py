"""Axial 2D rotary position embedding (RoPE) of the DINOv3 ViT.

Each head's channels are split into two halves for the rotate-half rotation; every half holds
``head_dim // 4`` frequencies for the row coordinate followed by ``head_dim // 4`` for the column
coordinate. Coordinates are the patch centres normalised separately per axis to [-1, 1]. Only
patch tokens are rotated; the class and storage (register) tokens are left untouched.
"""
import math
from typing import Tuple

import torch
from torch import Tensor, nn

# Number of coordinate axes (row, column) of the axial embedding.
_NUM_AXES = 2
# Each head dimension is split into rotate-half pairs (2) for each of the 2 axes -> head_dim // 4 periods.
_CHANNELS_PER_PERIOD = 2 * _NUM_AXES


def compute_rope_periods(*, head_dim: int, base: float) -> Tensor:
    """Periods of the RoPE frequencies, as the official initialisation computes them.

    Args:
        head_dim: channels per attention head (divisible by 4).
        base: RoPE base (100 for every released DINOv3 ViT).

    Returns:
        float32 tensor ``[head_dim // 4]`` with ``base ** (2 * i / (head_dim // 2))``.
    """
    if head_dim % _CHANNELS_PER_PERIOD != 0:
        raise ValueError(f"head_dim must be divisible by {_CHANNELS_PER_PERIOD} for axial RoPE, got {head_dim}")
    num_periods = head_dim // _CHANNELS_PER_PERIOD
    exponents = 2 * torch.arange(num_periods, dtype=torch.float32) / (head_dim // 2)  # [D_h / 4]
    return base**exponents


def rotate_half(x: Tensor) -> Tensor:
    """Map ``[x1, x2]`` (halves of the last dim) to ``[-x2, x1]``."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate the trailing patch tokens of ``x``; leading (prefix) tokens are returned unchanged.

    The rotation runs in the dtype of ``sin``/``cos`` (float32) and the result is cast back to
    ``x.dtype``, so reduced-precision activations are rotated in full precision.

    Args:
        x: ``[B, heads, N, head_dim]`` queries or keys; the last ``HW`` tokens are patches.
        sin: ``[HW, head_dim]``.
        cos: ``[HW, head_dim]``.

    Returns:
        Tensor of the same shape and dtype as ``x``.
    """
    num_patches = sin.shape[-2]
    num_prefix = x.shape[-2] - num_patches
    if num_prefix < 0:
        raise ValueError(f"RoPE tables cover {num_patches} patches but the input has only {x.shape[-2]} tokens")
    prefix, patches = x.split((num_prefix, num_patches), dim=-2)
    rotated = patches.to(sin.dtype)  # [B, heads, HW, D_h]
    rotated = rotated * cos + rotate_half(rotated) * sin
    return torch.cat((prefix, rotated.to(x.dtype)), dim=-2)


class RopePositionEmbedding(nn.Module):
    """Produces the sin/cos tables of the axial RoPE for an ``h x w`` patch grid.

    The ``periods`` buffer is persistent so that it is read from checkpoints (the released
    checkpoints store values that differ slightly from a fresh computation).

    Args:
        embed_dim: model width.
        num_heads: attention heads; ``embed_dim / num_heads`` must be divisible by 4.
        base: RoPE base.
    """

    def __init__(self, *, embed_dim: int, num_heads: int, base: float = 100.0) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.base = base
        self.head_dim = embed_dim // num_heads
        self.register_buffer("periods", compute_rope_periods(head_dim=self.head_dim, base=base), persistent=True)

    def reset_parameters(self) -> None:
        """Recompute ``periods`` from ``base`` (the official initialisation)."""
        with torch.no_grad():
            self.periods.copy_(compute_rope_periods(head_dim=self.head_dim, base=self.base))

    def forward(self, *, h: int, w: int) -> Tuple[Tensor, Tensor]:
        """Build the tables for an ``h x w`` grid (row-major token order).

        Args:
            h: patch rows.
            w: patch columns.

        Returns:
            ``(sin, cos)``, each float32 ``[h * w, head_dim]``.
        """
        dd = {"device": self.periods.device, "dtype": torch.float32}
        coords_h = torch.arange(0.5, h, **dd) / h  # [h] patch centres in (0, 1)
        coords_w = torch.arange(0.5, w, **dd) / w  # [w]
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1)  # [h, w, 2]
        coords = 2.0 * coords.flatten(0, 1) - 1.0  # [HW, 2] in (-1, 1)
        periods = self.periods.to(torch.float32)
        angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # [HW, 2, D_h / 4]
        angles = angles.flatten(1, 2).tile(2)  # [HW, D_h]
        return torch.sin(angles), torch.cos(angles)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"

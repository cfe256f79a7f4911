"""2D sine position encoding of feature maps (DETR style, normalized coordinates)."""
import math
from typing import Optional

import torch
from torch import nn

# Added to the normalizer so that the last row/column maps to just below ``scale``.
_NORMALIZE_EPS = 1e-6


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of the (row, column) position of every pixel of a feature map.

    Positions are ``1..H`` / ``1..W``; with ``normalize=True`` they are rescaled to ``(0, scale]``.
    Channel ``2k`` of each half is ``sin(p / T^(2k/F))`` and channel ``2k+1`` is ``cos(p / T^(2k/F))``.
    The first half encodes the row (y), the second half the column (x).

    Args:
        num_pos_feats: channels per axis ``F``; the output has ``2 * F`` channels.
        temperature: ``T``.
        normalize: rescale positions to ``(0, scale]``.
        scale: the range of normalized positions; default ``2 * pi``. Requires ``normalize=True``.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        *,
        temperature: float = 10000.0,
        normalize: bool = False,
        scale: Optional[float] = None,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def _encode(self, positions: torch.Tensor, dim_t: torch.Tensor) -> torch.Tensor:
        # positions: [N] -> [N, F] with sin on even and cos on odd channels
        angles = positions[:, None] / dim_t  # [N, F]
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature map [B, C, H, W]; only its shape and device are used.

        Returns:
            Position encoding [B, 2 * num_pos_feats, H, W] in float32.
        """
        batch, _, height, width = x.shape
        y_pos = torch.arange(1, height + 1, dtype=torch.float32, device=x.device)  # [H]
        x_pos = torch.arange(1, width + 1, dtype=torch.float32, device=x.device)  # [W]
        if self.normalize:
            y_pos = y_pos / (height + _NORMALIZE_EPS) * self.scale
            x_pos = x_pos / (width + _NORMALIZE_EPS) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = self._encode(y_pos, dim_t)  # [H, F]
        pos_x = self._encode(x_pos, dim_t)  # [W, F]
        pos = torch.cat(
            (
                pos_y[:, None, :].expand(height, width, -1),
                pos_x[None, :, :].expand(height, width, -1),
            ),
            dim=2,
        )  # [H, W, 2F]
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)  # [B, 2F, H, W]

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )

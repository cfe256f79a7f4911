"""Linear segmentation head: per-pixel linear classifier on frozen backbone patch features.

The features of the selected backbone layers (e.g. the last layer, or the last four) are
concatenated along channels, normalized with BatchNorm and classified with a 1x1 conv. Logits
stay at the patch-grid resolution; upsampling to the label size is the loss's / inference's job.

State-dict keys match the official DINOv3 linear head (``batchnorm_layer.*``, ``conv.*``), so its
released weights load directly (the official head uses ``SyncBatchNorm``, whose keys equal
``BatchNorm2d``'s; wrap with ``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU training).
"""

from typing import Sequence

import torch
from torch import nn

from .upernet import CLASSIFIER_INIT_STD

__all__ = ["LinearHead"]


class LinearHead(nn.Module):
    """Concatenate same-resolution features -> Dropout2d -> BatchNorm -> 1x1 conv."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        use_batchnorm: bool = True,
        dropout: float = 0.0,
    ):
        """
        Args:
            in_channels: total channels after concatenation (sum over the used layers, e.g.
                ``4 * embed_dim`` for the last four ViT layers).
            num_classes: number of output classes.
            use_batchnorm: apply BatchNorm to the concatenated features (``nn.Identity`` otherwise).
            dropout: ``Dropout2d`` probability on the concatenated features (0 disables it).
        """
        super().__init__()
        if in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout)
        self.batchnorm_layer = nn.BatchNorm2d(in_channels) if use_batchnorm else nn.Identity()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, mean=0.0, std=CLASSIFIER_INIT_STD)
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: tensors ``[B, D_i, h, w]`` that share ``B``, ``h`` and ``w`` (e.g. the reshaped
                patch grids of the last N backbone layers), with ``sum(D_i) == in_channels``.

        Returns:
            Logits ``[B, num_classes, h, w]``.
        """
        if len(features) == 0:
            raise ValueError("features must contain at least one tensor")
        ref = features[0].shape
        for i, x in enumerate(features):
            if x.dim() != 4 or x.shape[0] != ref[0] or x.shape[-2:] != ref[-2:]:
                raise ValueError(
                    f"features must all be [B, D, h, w] with the same B, h, w; features[0] is "
                    f"{tuple(ref)}, features[{i}] is {tuple(x.shape)}"
                )
        x = torch.cat(list(features), dim=1)  # [B, sum(D_i), h, w]
        if x.shape[1] != self.in_channels:
            raise ValueError(f"features have {x.shape[1]} channels in total, expected in_channels={self.in_channels}")
        x = self.batchnorm_layer(self.dropout(x))  # [B, in_channels, h, w]
        return self.conv(x)  # [B, num_classes, h, w]

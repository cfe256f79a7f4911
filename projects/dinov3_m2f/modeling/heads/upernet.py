"""UPerNet decode head: pyramid pooling on the coarsest level + FPN fusion of all levels.

Design (Xiao et al., "Unified Perceptual Parsing", 2018):

1. Pyramid pooling (PPM) on the coarsest input: average-pool it to ``s x s`` for every pool scale
   ``s``, project each with a 1x1 conv-norm-ReLU, upsample back, concatenate with the input and fuse
   with a 3x3 conv-norm-ReLU (``bottleneck``). This is the top level of the FPN.
2. FPN: 1x1 lateral conv-norm-ReLU on every finer input, top-down pathway (upsample + add), then a
   3x3 output conv-norm-ReLU on every finer level.
3. Fusion: upsample every FPN level to the finest resolution, concatenate, 3x3 conv-norm-ReLU
   (``fpn_bottleneck``), dropout, 1x1 classifier (``conv_seg``).

Submodule names follow the widely used mmsegmentation ``UPerHead`` layout (``psp_modules``,
``bottleneck``, ``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``); inside each
conv block the children are ``conv`` and ``norm``.
"""

from collections import OrderedDict
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import NormSpec, get_norm

__all__ = ["UPerNetHead"]

# Std of the normal init of the final 1x1 classifier (small logits at start => near-uniform softmax).
CLASSIFIER_INIT_STD = 0.01


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, norm: NormSpec) -> nn.Sequential:
    """Conv (no bias: the norm has one) -> norm -> ReLU, with children ``conv``, ``norm``, ``act``."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            norm=get_norm(norm, out_channels),
            act=nn.ReLU(inplace=True),
        )
    )


class UPerNetHead(nn.Module):
    """UPerNet semantic segmentation head over a fine-to-coarse feature pyramid.

    With BatchNorm, the pool-scale-1 branch sees one value per channel and image, so training needs
    more than one image per (synchronized) batch; GroupNorm has no such constraint.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm: NormSpec = "BN",
        dropout: float = 0.1,
        align_corners: bool = False,
    ):
        """
        Args:
            in_channels: channels of each input level, fine to coarse (e.g. res2..res5; for the
                DINOv3 adapter every entry is the ViT embed dim).
            num_classes: number of output classes.
            channels: width of every internal conv (PPM branches, FPN, fusion).
            pool_scales: output sizes of the adaptive average pools of the pyramid pooling module.
            norm: normalization of every internal conv; see :func:`dinov3_m2f.modeling.blocks.get_norm`.
            dropout: ``Dropout2d`` probability before the classifier (0 disables it).
            align_corners: ``align_corners`` of every bilinear resize inside the head.
        """
        super().__init__()
        in_channels = list(in_channels)
        if len(in_channels) < 1 or any(int(c) <= 0 for c in in_channels):
            raise ValueError(f"in_channels must be a non-empty list of positive ints, got {in_channels}")
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        pool_scales = tuple(pool_scales)
        if len(pool_scales) < 1 or any(int(s) <= 0 for s in pool_scales):
            raise ValueError(f"pool_scales must be a non-empty list of positive ints, got {pool_scales}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = channels
        self.pool_scales = pool_scales
        self.align_corners = align_corners

        coarsest = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), _conv_norm_relu(coarsest, channels, 1, norm))
            for scale in pool_scales
        )
        self.bottleneck = _conv_norm_relu(coarsest + len(pool_scales) * channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList(_conv_norm_relu(c, channels, 1, norm) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv_norm_relu(channels, channels, 3, norm) for _ in in_channels[:-1])
        self.fpn_bottleneck = _conv_norm_relu(len(in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=CLASSIFIER_INIT_STD)
        nn.init.zeros_(self.conv_seg.bias)

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def _pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_last, h, w] -> [B, channels, h, w]
        size = x.shape[-2:]
        pooled = [self._resize(branch(x), size) for branch in self.psp_modules]  # each [B, channels, h, w]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # cat: [B, C_last + S*channels, h, w]

    def _check_features(self, features: Sequence[torch.Tensor]) -> None:
        if len(features) != len(self.in_channels):
            raise ValueError(f"features must have {len(self.in_channels)} levels, got {len(features)}")
        for i, (x, c) in enumerate(zip(features, self.in_channels)):
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(f"features[{i}] must be [B, {c}, H, W], got {tuple(x.shape)}")

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: one tensor per level, fine to coarse, ``features[i]`` of shape
                ``[B, in_channels[i], H_i, W_i]`` (e.g. the adapter's res2..res5 at strides 4..32).

        Returns:
            Logits ``[B, num_classes, H_0, W_0]`` at the finest input resolution (H/4 for res2).
        """
        self._check_features(features)
        laterals: List[torch.Tensor] = [conv(x) for conv, x in zip(self.lateral_convs, features[:-1])]
        laterals.append(self._pyramid_pooling(features[-1]))  # each [B, channels, H_i, W_i]

        # Top-down pathway: add the upsampled coarser level into the next finer one.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1].shape[-2:])

        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])]
        outs.append(laterals[-1])
        finest = outs[0].shape[-2:]
        outs = [outs[0]] + [self._resize(x, finest) for x in outs[1:]]  # each [B, channels, H_0, W_0]
        fused = self.fpn_bottleneck(torch.cat(outs, dim=1))  # [B, channels, H_0, W_0]
        return self.conv_seg(self.dropout(fused))  # [B, num_classes, H_0, W_0]

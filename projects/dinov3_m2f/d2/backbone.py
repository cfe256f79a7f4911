"""Detectron2 Backbones on a frozen DINOv3 ViT: with the ViT-Adapter (res2..res5 pyramid) and
without it (the last blocks' patch grids at stride 16, for linear probing)."""
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from detectron2.layers import NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling import Backbone
from detectron2.utils import comm
from torch import nn

from dinov3_m2f.modeling.adapter import OUT_STRIDES, SIZE_DIVISIBILITY, DINOv3Adapter
from dinov3_m2f.modeling.blocks import NormSpec
from dinov3_m2f.modeling.dinov3 import get_interaction_indexes
from dinov3_m2f.weights import build_frozen_dinov3

__all__ = [
    "D2DINOv3Backbone",
    "D2DINOv3ViTBackbone",
    "dinov3_pyramid_shape",
    "dinov3_vit_shape",
    "feature_channels",
    "total_channels",
]

# Adapter norm chosen from the world size at construction.
AUTO_NORM = "auto"
# Patch size of every DINOv3 preset: ViT features are at stride 16 and inputs padded to 16.
VIT_STRIDE = 16


def resolve_norm(norm: NormSpec) -> NormSpec:
    """The adapter norm for :func:`dinov3_m2f.modeling.blocks.get_norm`, which owns the names:
    ``"auto"`` is synchronized BN when several processes train (``"SyncBN"`` with CUDA,
    detectron2's ``NaiveSyncBatchNorm`` on CPU/gloo, where torch's needs CUDA), else ``"BN"``;
    any other value is passed on."""
    if norm != AUTO_NORM:
        return norm
    if comm.get_world_size() == 1:
        return "BN"
    return "SyncBN" if torch.cuda.is_available() else NaiveSyncBatchNorm


def dinov3_pyramid_shape(*, channels: int) -> Dict[str, ShapeSpec]:
    """The output shapes of :class:`D2DINOv3Backbone` for a ViT ``embed_dim`` of ``channels``
    (a head's ``input_shape`` in a LazyConfig, without building the backbone)."""
    return {name: ShapeSpec(channels=channels, stride=s) for name, s in OUT_STRIDES.items()}


def dinov3_vit_shape(*, channels: int, num_layers: int) -> Dict[str, ShapeSpec]:
    """The output shapes of :class:`D2DINOv3ViTBackbone` reading the last ``num_layers`` blocks
    of a ViT of width ``channels``: ``layer0`` (earliest) .. ``layer{N-1}``, at stride 16."""
    return {f"layer{i}": ShapeSpec(channels=channels, stride=VIT_STRIDE) for i in range(num_layers)}


def feature_channels(shapes: Mapping[str, ShapeSpec]) -> List[int]:
    """Channels of each feature in order (e.g. a UPerNet head's ``in_channels``)."""
    return [spec.channels for spec in shapes.values()]


def total_channels(shapes: Mapping[str, ShapeSpec]) -> int:
    """Channels of all features concatenated (e.g. a linear head's ``in_channels``)."""
    return sum(feature_channels(shapes))


class _PaddedBackbone(Backbone):
    """A Backbone whose only padding constraint is ``size_divisibility`` (no square padding)."""

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": 0}


class D2DINOv3Backbone(_PaddedBackbone):
    """Frozen DINOv3 ViT + trainable ViT-Adapter as a detectron2 :class:`Backbone`.

    Outputs ``res2..res5`` with ``embed_dim`` channels at strides 4, 8, 16, 32 (inputs multiples
    of 32). The ViT is frozen and stays in eval mode under ``.train()``; only the adapter trains.
    """

    def __init__(
        self,
        *,
        preset: Optional[str],
        weights: Optional[str] = None,
        init_seed: Optional[int] = None,
        vit_kwargs: Optional[Dict[str, Any]] = None,
        vit_dtype: str = "float32",
        interaction_indexes: Optional[Sequence[int]] = None,
        norm: NormSpec = AUTO_NORM,
        adapter_kwargs: Optional[Dict[str, Any]] = None,
    ):
        """
        Args:
            preset: DINOv3 preset name (e.g. ``"vitl16"``) or None for a fully custom ViT
                described by ``vit_kwargs``.
            weights: local DINOv3 weights file/folder (``.pth``, ``.safetensors``, HF folder),
                loaded strictly. None keeps the random init (tests, synthetic runs).
            init_seed: seed of the random ViT init when ``weights`` is None, so that a run can be
                reproduced from a trainable-only checkpoint. Ignored when ``weights`` is given.
            vit_kwargs: overrides passed to ``build_dinov3`` (e.g. ``embed_dim``, ``depth``).
            vit_dtype: dtype the frozen ViT's weights are stored in: "float32", "bfloat16" or
                "float16" (see ``build_frozen_dinov3``; a reduced dtype runs the ViT under its own
                autocast to that dtype). The adapter stays float32.
            interaction_indexes: ViT blocks read by the adapter; default: the preset's.
            norm: adapter normalization: ``"auto"`` (see :func:`resolve_norm`), or a name or
                factory of :func:`dinov3_m2f.modeling.blocks.get_norm` ("BN", "SyncBN", "GN").
            adapter_kwargs: other :class:`DINOv3Adapter` keyword arguments (``n_points``,
                ``deform_num_heads``, ``conv_inplane``, ``drop_path_rate``, ...).
        """
        super().__init__()
        if interaction_indexes is None:
            if preset is None:
                raise ValueError("interaction_indexes is required when preset is None")
            interaction_indexes = get_interaction_indexes(preset)
        vit = build_frozen_dinov3(preset, weights=weights, init_seed=init_seed, dtype=vit_dtype,
                                  **dict(vit_kwargs or {}))
        self.adapter = DINOv3Adapter(vit, interaction_indexes=list(interaction_indexes),
                                     norm=resolve_norm(norm),
                                     **dict(adapter_kwargs or {}))
        self._out_features = list(self.adapter.out_strides)
        self._out_feature_strides = dict(self.adapter.out_strides)
        self._out_feature_channels = {k: self.adapter.out_channels for k in self._out_features}

    @property
    def vit(self) -> nn.Module:
        """The frozen DINOv3 ViT."""
        return self.adapter.backbone

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Normalized images [B, 3, H, W] (multiples of 32) -> ``res2..res5`` [B, D, H/s, W/s]."""
        return self.adapter(x)

    @property
    def size_divisibility(self) -> int:
        return SIZE_DIVISIBILITY


class D2DINOv3ViTBackbone(_PaddedBackbone):
    """Frozen DINOv3 ViT without adapter as a detectron2 :class:`Backbone` (linear probing).

    Outputs the final-norm patch grids of the last ``num_layers`` blocks, ``layer0`` (earliest)
    .. ``layer{N-1}`` (last block), each ``[B, embed_dim, H/16, W/16]``. Nothing is trainable.
    """

    def __init__(
        self,
        *,
        preset: Optional[str],
        weights: Optional[str] = None,
        init_seed: Optional[int] = None,
        vit_kwargs: Optional[Dict[str, Any]] = None,
        vit_dtype: str = "float32",
        num_layers: int = 1,
    ):
        """
        Args:
            preset, weights, init_seed, vit_kwargs, vit_dtype: the ViT, as for
                :class:`D2DINOv3Backbone`.
            num_layers: number of last blocks returned (official linear heads: 1 or 4).
        """
        super().__init__()
        self.vit = build_frozen_dinov3(preset, weights=weights, init_seed=init_seed, dtype=vit_dtype,
                                       **dict(vit_kwargs or {}))
        if self.vit.patch_size != VIT_STRIDE:
            raise ValueError(f"vit_kwargs: patch_size must be {VIT_STRIDE}, got {self.vit.patch_size}")
        if not 1 <= num_layers <= self.vit.n_blocks:
            raise ValueError(
                f"num_layers must be in [1, {self.vit.n_blocks}] (the ViT depth), got {num_layers}"
            )
        self.num_layers = num_layers
        shapes = dinov3_vit_shape(channels=self.vit.embed_dim, num_layers=num_layers)
        self._out_features = list(shapes)
        self._out_feature_strides = {k: s.stride for k, s in shapes.items()}
        self._out_feature_channels = {k: s.channels for k, s in shapes.items()}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Normalized images [B, 3, H, W] (multiples of 16) -> ``layer*`` [B, D, H/16, W/16]."""
        grids = self.vit.get_intermediate_layers(x, n=self.num_layers, reshape=True, norm=True)
        return dict(zip(self._out_features, grids))

    @property
    def size_divisibility(self) -> int:
        return VIT_STRIDE

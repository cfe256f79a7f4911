"""Detectron2 Backbone: a frozen DINOv3 ViT wrapped by the ViT-Adapter (res2..res5 pyramid)."""
import functools
import logging
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.layers import get_norm as d2_get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.utils import comm
from torch import nn

from dinov3_m2f.modeling.adapter import OUT_STRIDES, SIZE_DIVISIBILITY, DINOv3Adapter
from dinov3_m2f.modeling.dinov3 import INTERACTION_INDEXES, build_dinov3, load_dinov3_weights

logger = logging.getLogger(__name__)

__all__ = ["D2DINOv3Backbone", "dinov3_pyramid_shape"]

# Adapter norm chosen from the world size at construction.
AUTO_NORM = "auto"


def dinov3_pyramid_shape(*, channels: int) -> Dict[str, ShapeSpec]:
    """The output shapes of :class:`D2DINOv3Backbone` for a ViT of width ``channels``.

    Lets a LazyConfig give the head its ``input_shape`` without building the backbone.

    Args:
        channels: the ViT ``embed_dim``.

    Returns:
        ``{"res2": ShapeSpec(channels, 4), ..., "res5": ShapeSpec(channels, 32)}``.
    """
    return {
        name: ShapeSpec(channels=channels, stride=stride) for name, stride in OUT_STRIDES.items()
    }


def resolve_adapter_norm(norm: str) -> Callable[[int], nn.Module]:
    """Pick the adapter normalization.

    Args:
        norm: ``"auto"`` (synchronized BN when several processes train: ``"SyncBN"`` with CUDA,
            detectron2's ``"naiveSyncBN"`` on CPU/gloo; plain ``"BN"`` otherwise), or any name
            detectron2's ``get_norm`` accepts ("BN", "SyncBN", "naiveSyncBN", "GN", ...).

    Returns:
        A factory ``num_channels -> nn.Module`` for :class:`DINOv3Adapter`.
    """
    if norm == AUTO_NORM:
        if comm.get_world_size() > 1:
            norm = "SyncBN" if torch.cuda.is_available() else "naiveSyncBN"
        else:
            norm = "BN"
    return functools.partial(d2_get_norm, norm)


@BACKBONE_REGISTRY.register()
class D2DINOv3Backbone(Backbone):
    """Frozen DINOv3 ViT + trainable ViT-Adapter as a detectron2 :class:`Backbone`.

    Outputs ``res2..res5`` with ``embed_dim`` channels at strides 4, 8, 16, 32. The ViT is
    frozen and stays in eval mode under ``.train()``; only the adapter is trainable.
    """

    def __init__(
        self,
        *,
        preset: Optional[str],
        weights: Optional[str] = None,
        init_seed: Optional[int] = None,
        vit_kwargs: Optional[Dict[str, Any]] = None,
        interaction_indexes: Optional[Sequence[int]] = None,
        norm: str = AUTO_NORM,
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
            interaction_indexes: ViT blocks read by the adapter; default: the preset's.
            norm: adapter normalization, see :func:`resolve_adapter_norm`.
            adapter_kwargs: other :class:`DINOv3Adapter` keyword arguments (``n_points``,
                ``deform_num_heads``, ``conv_inplane``, ``drop_path_rate``, ...).
        """
        super().__init__()
        vit_kwargs = dict(vit_kwargs or {})
        if interaction_indexes is None:
            if preset not in INTERACTION_INDEXES:
                raise ValueError(
                    f"interaction_indexes is required for preset={preset!r} "
                    f"(known presets: {sorted(INTERACTION_INDEXES)})"
                )
            interaction_indexes = INTERACTION_INDEXES[preset]
        if weights:
            vit = build_dinov3(preset, **vit_kwargs)
            load_dinov3_weights(vit, weights)
            logger.info("Loaded DINOv3 weights from %s", weights)
        elif init_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                vit = build_dinov3(preset, **vit_kwargs)
        else:
            logger.warning(
                "DINOv3 backbone has random weights and no init_seed: trainable-only checkpoints "
                "of this model cannot be reproduced (set init_seed, weights or full checkpoints)"
            )
            vit = build_dinov3(preset, **vit_kwargs)
        self.adapter = DINOv3Adapter(
            vit,
            interaction_indexes=list(interaction_indexes),
            norm=resolve_adapter_norm(norm),
            **dict(adapter_kwargs or {}),
        )
        self._out_features = list(self.adapter.out_strides)
        self._out_feature_strides = dict(self.adapter.out_strides)
        self._out_feature_channels = {k: self.adapter.out_channels for k in self._out_features}

    @property
    def vit(self) -> nn.Module:
        """The frozen DINOv3 ViT."""
        return self.adapter.backbone

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: normalized images [B, 3, H, W], H and W multiples of 32.

        Returns:
            dict ``res2..res5`` -> [B, D, H/s, W/s].
        """
        return self.adapter(x)

    @property
    def size_divisibility(self) -> int:
        return SIZE_DIVISIBILITY

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": SIZE_DIVISIBILITY, "square_size": 0}

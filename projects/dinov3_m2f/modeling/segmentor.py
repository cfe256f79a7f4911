"""The segmentor stack without detectron2 (ViT-Adapter around a DINOv3 ViT, Mask2Former head on
its levels) and the tiny model's sizes.

The tiny model is the one of ``configs/synthetic/m2f_tiny_synthetic.py``: a 64-wide, 4-block
DINOv3-architecture ViT with a small adapter and head, which trains on 2 CPU cores in minutes.
The config, the dev benchmarks' ``tiny`` model and the tests take its sizes from here.
"""
from typing import Any, Mapping, Optional, Sequence, Tuple

from .adapter import DINOv3Adapter
from .dinov3 import DinoVisionTransformer, build_dinov3
from .mask2former_head import Mask2FormerHead

__all__ = [
    "TINY_ADAPTER",
    "TINY_HEAD",
    "TINY_IMAGE_SIZE",
    "TINY_INTERACTION_INDEXES",
    "TINY_NUM_CLASSES",
    "TINY_VIT",
    "build_segmentor",
    "build_tiny_segmentor",
]

# build_dinov3 keyword arguments of the tiny ViT (no preset).
TINY_VIT = dict(embed_dim=64, depth=4, num_heads=2, patch_size=16)
# Every block of the tiny ViT feeds the adapter.
TINY_INTERACTION_INDEXES = (0, 1, 2, 3)
# DINOv3Adapter keyword arguments of the tiny model.
TINY_ADAPTER = dict(conv_inplane=16, deform_num_heads=4, drop_path_rate=0.0)
# Mask2FormerHead keyword arguments of the tiny model (num_classes aside).
TINY_HEAD = dict(hidden_dim=64, num_queries=16, nheads=4, enc_dim_feedforward=128, dec_dim_feedforward=128,
                 enc_layers=2, dec_layers=3)
# The synthetic dataset's classes and image side (dinov3_m2f.data.synthetic).
TINY_NUM_CLASSES = 7
TINY_IMAGE_SIZE = 128


def build_segmentor(
    vit: DinoVisionTransformer,
    *,
    interaction_indexes: Sequence[int],
    head_kwargs: Mapping[str, Any],
    adapter_kwargs: Optional[Mapping[str, Any]] = None,
    with_cp: bool = False,
) -> Tuple[DINOv3Adapter, Mask2FormerHead]:
    """A ViT-Adapter around ``vit`` and a Mask2Former head fed by its four levels.

    Args:
        vit: the (frozen) DINOv3 ViT.
        interaction_indexes: 0-based blocks of ``vit`` whose outputs feed the adapter.
        head_kwargs: :class:`Mask2FormerHead` keyword arguments (``num_classes`` included).
        adapter_kwargs: further :class:`DINOv3Adapter` keyword arguments.
        with_cp: activation checkpointing in the adapter.

    Returns:
        (adapter, head): ``head(adapter(images))`` gives the Mask2Former outputs.
    """
    adapter = DINOv3Adapter(vit, interaction_indexes=list(interaction_indexes), with_cp=with_cp,
                            **(adapter_kwargs or {}))
    input_shape = {name: (adapter.out_channels, stride) for name, stride in adapter.out_strides.items()}
    return adapter, Mask2FormerHead(input_shape, **head_kwargs)


def build_tiny_segmentor(
    vit: Optional[DinoVisionTransformer] = None, *, num_classes: int = TINY_NUM_CLASSES, with_cp: bool = False
) -> Tuple[DINOv3Adapter, Mask2FormerHead]:
    """The tiny model (random weights from the global torch seed).

    Args:
        vit: a ViT of the :data:`TINY_VIT` sizes (e.g. built frozen or on a device); None builds one.
        num_classes: classes of the head.
        with_cp: activation checkpointing in the adapter.
    """
    vit = build_dinov3(None, **TINY_VIT) if vit is None else vit
    return build_segmentor(vit, interaction_indexes=TINY_INTERACTION_INDEXES, adapter_kwargs=TINY_ADAPTER,
                           head_kwargs=dict(TINY_HEAD, num_classes=num_classes), with_cp=with_cp)

"""Check a converted official Mask2Former head as a whole before its sizes are trusted.

The head sizes of a released checkpoint (classes, hidden width, queries, layers, FFN widths) are
read from a few tensors. :func:`check_official_head` then builds the head those sizes describe
(on the meta device: no memory) and compares every tensor: a key missing, left over or of
another shape is reported, all at once, naming the file, so that a damaged or foreign head never
turns into config advice.
"""
import collections
import re
from typing import Any, Dict, List, Mapping

import torch

from ..listing import MAX_LISTED
from ..modeling.mask2former_head import Mask2FormerHead, official_dinov3_head_kwargs

__all__ = ["check_official_head"]

_Shape = collections.namedtuple("_Shape", ["channels", "stride"])
# The head's inputs: the adapter's four levels, all with the ViT's width.
_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
# The official deformable encoder: 3 feature levels, 4 sampling points per head and level.
_ENC_LEVELS, _ENC_POINTS = 3, 4
_ENC_LAYER = "pixel_decoder.encoder.encoder.layers.{}."
_DEC_FFN = "predictor.transformer_ffn_layers.{}."
# Tensors the sizes are read from.
_SIZE_KEYS = (
    "predictor.class_embed.weight",
    "predictor.query_embed.weight",
    _DEC_FFN.format(0) + "linear1.weight",
    _ENC_LAYER.format(0) + "linear1.weight",
    _ENC_LAYER.format(0) + "self_attn.attention_weights.weight",
)


def _count(head: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix).replace(r"\{\}", r"(\d+)"))
    return len({m.group(1) for key in head if (m := pattern.match(key))})


def _sizes(head: Mapping[str, torch.Tensor], path: str) -> Dict[str, Any]:
    missing = [k for k in _SIZE_KEYS if k not in head]
    if missing:
        raise ValueError(f"{path}: the head lacks {missing}, which its sizes are read from; is it a "
                         "complete official DINOv3 Mask2Former head?")
    bad = [k for k in _SIZE_KEYS if head[k].dim() != 2]
    if bad:
        raise ValueError(f"{path}: {bad} should be matrices, got shapes {[tuple(head[k].shape) for k in bad]}")
    class_embed = head["predictor.class_embed.weight"]  # [C + 1, hidden]
    kwargs = official_dinov3_head_kwargs(hidden_dim=class_embed.shape[1], num_classes=class_embed.shape[0] - 1)
    kwargs.update(
        num_queries=head["predictor.query_embed.weight"].shape[0],  # [Q, hidden]
        nheads=max(1, head[_ENC_LAYER.format(0) + "self_attn.attention_weights.weight"].shape[0]
                   // (_ENC_LEVELS * _ENC_POINTS)),
        enc_dim_feedforward=head[_ENC_LAYER.format(0) + "linear1.weight"].shape[0],
        dec_dim_feedforward=head[_DEC_FFN.format(0) + "linear1.weight"].shape[0],
        enc_layers=_count(head, _ENC_LAYER),
        dec_layers=_count(head, _DEC_FFN),
    )
    return kwargs


def check_official_head(head: Mapping[str, torch.Tensor], *, embed_dim: int, path: str) -> Dict[str, Any]:
    """Check that every tensor of ``head`` fits the head its sizes describe.

    Args:
        head: the converted head (``pixel_decoder.*``, ``predictor.*`` keys).
        embed_dim: the ViT width (the head's input channels).
        path: the checkpoint, named in errors.

    Returns:
        The :class:`Mask2FormerHead` keyword arguments of the head (the sizes for the config).

    Raises:
        ValueError: naming ``path`` and every key missing, unexpected or of another shape.
    """
    kwargs = _sizes(head, path)
    sizes = ", ".join(f"{k} {kwargs[k]}" for k in ("num_classes", "hidden_dim", "num_queries", "nheads",
                                                    "enc_layers", "dec_layers"))
    try:
        with torch.device("meta"):
            model = Mask2FormerHead({name: _Shape(embed_dim, s) for name, s in _STRIDES.items()}, **kwargs)
    except (AssertionError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: no head has the sizes its tensors give ({sizes}): {e}") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems: List[str] = []
    missing = sorted(set(expected) - set(head))
    unexpected = sorted(set(head) - set(expected))
    wrong = [f"{k} {tuple(head[k].shape)} (expected {expected[k]})"
             for k in sorted(expected) if k in head and tuple(head[k].shape) != expected[k]]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {what}: {keys[:MAX_LISTED]}")
    if problems:
        raise ValueError(f"{path}: the head's tensors disagree with the sizes read from it ({sizes}); "
                         + "; ".join(problems))
    return kwargs

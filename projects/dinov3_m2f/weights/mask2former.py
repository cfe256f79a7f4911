"""Map an original Mask2Former checkpoint (facebookresearch/Mask2Former model zoo) onto our head.

The original semantic-segmentation model keeps its head under ``sem_seg_head.``: the pixel
decoder (``pixel_decoder.``: ``input_proj``, a deformable encoder under ``transformer.``, the FPN
convolutions ``adapter_<k>`` / ``layer_<k>``, ``mask_features``) and the masked-attention
transformer decoder (``predictor.``). Our :class:`~dinov3_m2f.modeling.Mask2FormerHead` has the
same modules under other names in a few places:

=====================================================  ==================================
original (below ``sem_seg_head.``)                      ours (below ``sem_seg_head.``)
=====================================================  ==================================
``pixel_decoder.transformer.level_embed``               ``pixel_decoder.encoder.level_encoding``
``pixel_decoder.transformer.encoder.layers.<i>.*``      ``pixel_decoder.encoder.encoder.layers.<i>.*``
``pixel_decoder.layer_<k>.*`` (k = 1 finest)            ``pixel_decoder.output_convs.<n-k>.*`` (coarsest first)
``pixel_decoder.mask_features.*``                       ``pixel_decoder.mask_feature.*``
``predictor.decoder_norm.*``                            ``predictor.post_norm.*``
``predictor.static_query.*`` (first checkpoints)        ``predictor.query_feat.*``
``predictor.*`` (everything else)                       ``predictor.*``
=====================================================  ==================================

Skipped, with the reason recorded: the modules that read backbone features, whose input channels
are those of the original backbone (``pixel_decoder.input_proj.*``, the FPN laterals
``pixel_decoder.adapter_<k>.*``), the original backbone itself, and anything outside the head.
Given the shapes of the target head, keys it lacks or whose shape differs (e.g. ``class_embed``
for another class count) are skipped too.
"""
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

__all__ = ["Mask2FormerConversion", "convert_mask2former_state_dict"]

# Prefix of the head in the original meta-architecture (and in our Detectron2 model).
HEAD_PREFIX = "sem_seg_head."
_PIXEL_DECODER = "pixel_decoder."
_PREDICTOR = "predictor."
# Renames inside the head: (original regex, our replacement); FPN output convs are handled apart.
_RENAMES: Tuple[Tuple[str, str], ...] = (
    (r"^pixel_decoder\.transformer\.level_embed$", "pixel_decoder.encoder.level_encoding"),
    (r"^pixel_decoder\.transformer\.encoder\.layers\.", "pixel_decoder.encoder.encoder.layers."),
    (r"^pixel_decoder\.mask_features\.", "pixel_decoder.mask_feature."),
    (r"^predictor\.decoder_norm\.", "predictor.post_norm."),
    (r"^predictor\.static_query\.", "predictor.query_feat."),
)
_FPN_OUTPUT = re.compile(r"^pixel_decoder\.layer_(\d+)\.(.+)$")
# Head modules whose input is a backbone feature map: their channels are the original backbone's.
_BACKBONE_INPUT = re.compile(r"^pixel_decoder\.(input_proj\.\d+|adapter_\d+)\.")

SKIP_BACKBONE_INPUT = "reads backbone features: its input channels are the original backbone's"
SKIP_OUTSIDE_HEAD = "not part of the Mask2Former head (original backbone, criterion or meta-architecture)"
SKIP_UNKNOWN = "no counterpart in our Mask2Former head"
SKIP_NOT_IN_TARGET = "the target head has no such parameter (check its config: layers, levels)"


@dataclass
class Mask2FormerConversion:
    """Result of :func:`convert_mask2former_state_dict`.

    Attributes:
        state_dict: our head's keys (below ``sem_seg_head.``, i.e. ``pixel_decoder.*`` and
            ``predictor.*``) -> tensors taken from the original checkpoint.
        skipped: original key (as in the file) -> why it was not converted.
        uninitialized: keys of the target head that the checkpoint does not provide (they keep
            the model's initialisation); empty when no target shapes were given.
    """

    state_dict: Dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    uninitialized: List[str] = field(default_factory=list)


def _rename(key: str, num_fpn_levels: int) -> Optional[str]:
    """Our name of a head key (without ``sem_seg_head.``), or None when there is none."""
    match = _FPN_OUTPUT.match(key)
    if match is not None:
        level = int(match.group(1))  # 1 = the finest FPN level
        return f"pixel_decoder.output_convs.{num_fpn_levels - level}.{match.group(2)}"
    for pattern, replacement in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    if key.startswith(_PREDICTOR):
        return key
    return None


def convert_mask2former_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    target_shapes: Optional[Mapping[str, Tuple[int, ...]]] = None,
) -> Mask2FormerConversion:
    """Convert an original Mask2Former state dict for our :class:`Mask2FormerHead`.

    Args:
        state_dict: the original model's state dict (``sem_seg_head.*``, ``backbone.*``, ...).
        target_shapes: optional shapes of the target head's state dict (our keys below
            ``sem_seg_head.``, e.g. ``{k: tuple(v.shape) for k, v in head.state_dict().items()}``);
            converted keys the target lacks, or whose shape differs, are then skipped, and the
            target keys left without a value are listed in ``uninitialized``.

    Returns:
        The converted tensors, the skipped keys with their reasons, and the uninitialised keys.
    """
    head_keys = [k[len(HEAD_PREFIX) :] for k in state_dict if k.startswith(HEAD_PREFIX)]
    if not any(k.startswith((_PIXEL_DECODER, _PREDICTOR)) for k in head_keys):
        raise ValueError(
            f"no '{HEAD_PREFIX}pixel_decoder.*' or '{HEAD_PREFIX}predictor.*' keys: not a Mask2Former "
            f"checkpoint (first keys: {list(state_dict)[:5]})"
        )
    num_fpn_levels = len({m.group(1) for k in head_keys if (m := _FPN_OUTPUT.match(k))})
    result = Mask2FormerConversion()
    for key, value in state_dict.items():
        if not key.startswith(HEAD_PREFIX):
            result.skipped[key] = SKIP_OUTSIDE_HEAD
            continue
        head_key = key[len(HEAD_PREFIX) :]
        if _BACKBONE_INPUT.match(head_key):
            result.skipped[key] = SKIP_BACKBONE_INPUT
            continue
        ours = _rename(head_key, num_fpn_levels)
        if ours is None:
            result.skipped[key] = SKIP_UNKNOWN
        elif target_shapes is not None and ours not in target_shapes:
            result.skipped[key] = f"{SKIP_NOT_IN_TARGET}: {ours}"
        elif target_shapes is not None and tuple(value.shape) != tuple(target_shapes[ours]):
            result.skipped[key] = (
                f"shape {tuple(value.shape)} differs from {ours} {tuple(target_shapes[ours])} of the target head"
            )
        else:
            result.state_dict[ours] = value
    if target_shapes is not None:
        result.uninitialized = sorted(k for k in target_shapes if k not in result.state_dict)
    logger.info(
        "Mask2Former checkpoint: %d head tensors converted, %d keys skipped, %d target keys uninitialised",
        len(result.state_dict), len(result.skipped), len(result.uninitialized),
    )
    return result

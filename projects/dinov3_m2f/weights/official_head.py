"""Convert official DINOv3 segmentor checkpoints (adapter + Mask2Former head) to our modules.

The official model is ``FeatureDecoder(ModuleList([DINOv3_Adapter(backbone), Mask2FormerHead]))``, so its
keys are ``segmentation_model.0.backbone.*`` (ViT), ``segmentation_model.0.*`` (adapter) and
``segmentation_model.1.*`` (head). Our :class:`DINOv3Adapter` and :class:`Mask2FormerHead` use the same
key names below those prefixes, so the conversion only splits the dict and strips the prefixes.
"""
from typing import Dict, Mapping

import torch
from torch import nn

from ..listing import MAX_LISTED

__all__ = [
    "convert_official_segmentor_state_dict",
    "convert_official_head_state_dict",
    "load_converted_state_dict",
]

ADAPTER_PREFIX = "segmentation_model.0."
BACKBONE_PREFIX = ADAPTER_PREFIX + "backbone."
HEAD_PREFIX = "segmentation_model.1."

# Section -> key prefix; the backbone prefix lies inside the adapter's, so it is tried first.
SECTION_PREFIXES = {"backbone": BACKBONE_PREFIX, "adapter": ADAPTER_PREFIX, "head": HEAD_PREFIX}

StateDict = Dict[str, torch.Tensor]


def _split(state_dict: Mapping[str, torch.Tensor], *, what: str) -> Dict[str, StateDict]:
    sections: Dict[str, StateDict] = {name: {} for name in SECTION_PREFIXES}
    unknown = []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"{what}: state-dict keys must be strings, got {key!r}")
        section = next((name for name, prefix in SECTION_PREFIXES.items() if key.startswith(prefix)), None)
        if section is None:
            unknown.append(key)
        else:
            sections[section][key[len(SECTION_PREFIXES[section]) :]] = value
    if unknown:
        raise ValueError(
            f"{what}: {len(unknown)} keys are outside '{ADAPTER_PREFIX}' / '{HEAD_PREFIX}', e.g. "
            f"{unknown[:MAX_LISTED]}; is this an official DINOv3 M2F segmentor checkpoint (not wrapped in another dict)?"
        )
    return sections


def convert_official_segmentor_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, StateDict]:
    """Split a full official segmentor state dict (backbone included) into our three modules.

    Args:
        state_dict: ``FeatureDecoder.state_dict()`` of the official code.

    Returns:
        ``{"backbone": ViT keys, "adapter": adapter keys without the backbone, "head": head keys}``:
        ``backbone`` loads into ``DINOv3Adapter.backbone``, ``adapter`` into the adapter's own modules,
        ``head`` into :class:`Mask2FormerHead` (see :func:`load_converted_state_dict`).
    """
    sections = _split(state_dict, what="official segmentor state dict")
    empty = [name for name, section in sections.items() if not section]
    if empty:
        raise ValueError(
            f"official segmentor state dict has no {empty} keys (prefixes: backbone '{BACKBONE_PREFIX}', "
            f"adapter '{ADAPTER_PREFIX}', head '{HEAD_PREFIX}'); for a released head-only checkpoint use "
            "convert_official_head_state_dict"
        )
    return sections


def convert_official_head_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, StateDict]:
    """Split a released head-only checkpoint (``*_m2f_head-*.pth``: adapter + head, no backbone).

    Args:
        state_dict: the released checkpoint's state dict.

    Returns:
        ``{"adapter": ..., "head": ...}``; the backbone comes from its own checkpoint.
    """
    sections = _split(state_dict, what="official head checkpoint")
    if sections["backbone"]:
        raise ValueError(
            f"official head checkpoint contains {len(sections['backbone'])} backbone keys "
            f"('{BACKBONE_PREFIX}*'); use convert_official_segmentor_state_dict for full checkpoints"
        )
    empty = [name for name in ("adapter", "head") if not sections[name]]
    if empty:
        raise ValueError(f"official head checkpoint has no {empty} keys")
    return {"adapter": sections["adapter"], "head": sections["head"]}


def load_converted_state_dict(
    converted: Mapping[str, StateDict], *, adapter: nn.Module, head: nn.Module
) -> None:
    """Strictly load the output of one of the converters into an adapter and a head.

    Every adapter and head parameter/buffer must be present (the backbone's only when ``converted`` has a
    ``"backbone"`` section) and no key may be left over.

    Args:
        converted: output of :func:`convert_official_segmentor_state_dict` or
            :func:`convert_official_head_state_dict`.
        adapter: a :class:`DINOv3Adapter` (its backbone is ``adapter.backbone``).
        head: a :class:`Mask2FormerHead`.
    """
    unknown_sections = set(converted) - set(SECTION_PREFIXES)
    if unknown_sections or not {"adapter", "head"} <= set(converted):
        raise ValueError(
            f"converted state dict must have 'adapter' and 'head' (and optionally 'backbone') sections, "
            f"got {sorted(converted)}"
        )
    if "backbone" in converted:
        adapter.backbone.load_state_dict(converted["backbone"], strict=True)
    result = adapter.load_state_dict(converted["adapter"], strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"adapter weights do not match: missing {missing[:MAX_LISTED]} ({len(missing)}), "
            f"unexpected {result.unexpected_keys[:MAX_LISTED]} ({len(result.unexpected_keys)})"
        )
    head.load_state_dict(converted["head"], strict=True)

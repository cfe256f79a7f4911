"""Optimizer parameter groups for a model whose backbone is frozen.

Only trainable parameters get an entry: the frozen DINOv3 ViT never reaches the optimizer, so it
carries no optimizer state and never appears in a checkpoint's optimizer section.
"""
import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

logger = logging.getLogger(__name__)

# Module types whose parameters (scale/shift) are excluded from weight decay.
NORM_MODULE_TYPES: Tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)
# Parameter names (last component) that are embeddings rather than weights.
DEFAULT_NO_DECAY_NAMES: Tuple[str, ...] = ("level_embed", "query_feat", "query_embed")


def _lr_multiplier(name: str, lr_multipliers: Mapping[str, float]) -> float:
    """The multiplier of the longest prefix of ``name`` in ``lr_multipliers`` (1.0 if none)."""
    best_prefix, best_value = "", 1.0
    for prefix, value in lr_multipliers.items():
        matches = name == prefix or name.startswith(prefix + ".")
        if matches and len(prefix) > len(best_prefix):
            best_prefix, best_value = prefix, float(value)
    return best_value


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    lr_multipliers: Optional[Mapping[str, float]] = None,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    no_decay_names: Sequence[str] = DEFAULT_NO_DECAY_NAMES,
) -> List[Dict]:
    """Build optimizer parameter groups from the trainable parameters of ``model``.

    Parameters with ``requires_grad=False`` (the frozen backbone) are skipped. Parameters shared
    between modules are listed once. Groups with identical hyper-parameters are merged.

    Args:
        model: the model; ``named_modules`` names are used for ``lr_multipliers``.
        base_lr: learning rate before multipliers.
        weight_decay: weight decay of ordinary weights and biases.
        lr_multipliers: ``{module_prefix: factor}``, e.g. ``{"backbone.adapter": 1.0,
            "sem_seg_head.predictor": 1.0}``; the longest matching prefix wins.
        weight_decay_norm: weight decay of normalization layers' parameters.
        weight_decay_embed: weight decay of ``nn.Embedding`` weights and of parameters named in
            ``no_decay_names`` (learnable queries, level embeddings).
        no_decay_names: parameter names (last dotted component) treated as embeddings.

    Returns:
        A list of ``{"params": [...], "lr": float, "weight_decay": float}`` dicts.

    Raises:
        ValueError: if ``model`` has no trainable parameter, or a prefix in ``lr_multipliers``
            names no module.
    """
    lr_multipliers = dict(lr_multipliers or {})
    module_names = {name for name, _ in model.named_modules()}
    unknown = sorted(p for p in lr_multipliers if p not in module_names)
    if unknown:
        raise ValueError(f"lr_multipliers: no module named {unknown} in {type(model).__name__}")

    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    seen = set()
    num_frozen = 0
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if param in seen:
                continue
            seen.add(param)
            if not param.requires_grad:
                num_frozen += param.numel()
                continue
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NORM_MODULE_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding) or param_name in no_decay_names:
                decay = weight_decay_embed
            else:
                decay = weight_decay
            lr = base_lr * _lr_multiplier(full_name, lr_multipliers)
            groups.setdefault((lr, decay), []).append(param)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameter")
    num_trainable = sum(p.numel() for params in groups.values() for p in params)
    logger.info(
        "Optimizer: %d trainable parameters in %d groups; %d frozen parameters excluded",
        num_trainable,
        len(groups),
        num_frozen,
    )
    return [
        {"params": params, "lr": lr, "weight_decay": decay}
        for (lr, decay), params in groups.items()
    ]


"""The optimizer parameter groups of the trainable parameters.

Only trainable parameters get an entry: the frozen DINOv3 ViT (and anything frozen by the config's
``train.trainable`` / ``train.freeze``, see :func:`dinov3_m2f.training.set_trainable`) never
reaches the optimizer, so it carries no optimizer state and never appears in a checkpoint's
optimizer section.
"""
import functools
import logging
from typing import Dict, List, Mapping, Optional, Sequence

from detectron2.solver.build import get_default_optimizer_params, reduce_param_groups
from torch import nn

from dinov3_m2f.training import is_under

logger = logging.getLogger(__name__)

# Parameter names (last component) that are embeddings rather than weights.
DEFAULT_NO_DECAY_NAMES = ("level_embed", "query_feat", "query_embed")


def _lr_multiplier(name: str, *, lr_multipliers: Mapping[str, float]) -> float:
    """The multiplier of the longest prefix of ``name`` in ``lr_multipliers`` (1.0 if none)."""
    matches = [prefix for prefix in lr_multipliers if is_under(name, prefix)]
    return float(lr_multipliers[max(matches, key=len)]) if matches else 1.0


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
    """detectron2's ``get_default_optimizer_params`` over the trainable parameters of ``model``,
    with learning-rate multipliers by module prefix and embeddings excluded from weight decay.

    Args:
        base_lr, weight_decay, weight_decay_norm: as for detectron2's function.
        lr_multipliers: ``{module_prefix: factor}``, e.g. ``{"backbone.adapter": 0.1}``; the
            longest matching prefix wins.
        weight_decay_embed: weight decay of ``nn.Embedding`` weights and of parameters named in
            ``no_decay_names`` (last dotted component: learnable queries, level embeddings).

    Returns:
        Merged ``{"params": [...], "lr": float, "weight_decay": float}`` groups.
    """
    lr_multipliers = dict(lr_multipliers or {})
    unknown = sorted(p for p in lr_multipliers if p not in dict(model.named_modules()))
    if unknown:
        raise ValueError(f"lr_multipliers: no module named {unknown} in {type(model).__name__}")
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        lr_factor_func=functools.partial(_lr_multiplier, lr_multipliers=lr_multipliers),
        overrides={name: {"weight_decay": weight_decay_embed} for name in no_decay_names},
    )
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameter")
    # detectron2 matches overrides by parameter name only, and nn.Embedding weights are "weight".
    embeddings = {p for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    per_param = [{**group, "params": [p]} for group in groups for p in group["params"]]
    for group in per_param:
        if group["params"][0] in embeddings:
            group["weight_decay"] = weight_decay_embed
    groups = reduce_param_groups(per_param)
    logger.info(
        "Optimizer: %d trainable parameters in %d groups",
        sum(p.numel() for g in groups for p in g["params"]), len(groups),
    )
    return groups

"""Which parameters train, and their optimizer parameter groups.

Only trainable parameters get an entry: the frozen DINOv3 ViT (and anything frozen by the config's
``train.trainable`` / ``train.freeze``) never reaches the optimizer, so it carries no optimizer
state and never appears in a checkpoint's optimizer section.
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
# set_trainable lists the trained parameter names in the log up to this many.
MAX_NAMES_LOGGED = 20


def _matches(name: str, prefix: str) -> bool:
    """Whether the dotted ``name`` is ``prefix`` or lies under it."""
    return name == prefix or name.startswith(prefix + ".")


def _lr_multiplier(name: str, lr_multipliers: Mapping[str, float]) -> float:
    """The multiplier of the longest prefix of ``name`` in ``lr_multipliers`` (1.0 if none)."""
    best_prefix, best_value = "", 1.0
    for prefix, value in lr_multipliers.items():
        if _matches(name, prefix) and len(prefix) > len(best_prefix):
            best_prefix, best_value = prefix, float(value)
    return best_value


def set_trainable(
    model: nn.Module,
    *,
    trainable: Optional[Sequence[str]] = None,
    freeze: Sequence[str] = (),
) -> List[str]:
    """Freeze parameters by module-name prefix (applied before the optimizer is built).

    ``trainable`` restricts training to the named modules: every parameter outside them gets
    ``requires_grad=False``; parameters inside keep their flag, so a module frozen by construction
    (the DINOv3 ViT) stays frozen. ``freeze`` then freezes the named modules. Modules left without
    any trainable parameter should run in eval mode (BatchNorm statistics and dropout frozen too);
    their names are returned for that.

    Args:
        model: the (unwrapped) model.
        trainable: module-name prefixes to train (e.g. ``["sem_seg_head.predictor.class_embed"]``);
            None = no restriction.
        freeze: module-name prefixes to freeze (e.g. ``["backbone.adapter"]``).

    Returns:
        Names of the largest submodules frozen by this call whose parameters are now all frozen.

    Raises:
        ValueError: a prefix names no module, a ``trainable`` prefix holds no trainable parameter
            or nothing is left to train.
    """
    module_names = {name for name, _ in model.named_modules() if name}
    for option, prefixes in (("train.trainable", trainable or ()), ("train.freeze", freeze)):
        unknown = sorted(p for p in prefixes if p not in module_names)
        if unknown:
            raise ValueError(f"{option}: no module named {unknown} in {type(model).__name__}")
    was_trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if trainable is not None:
        for prefix in trainable:
            if not any(_matches(n, prefix) for n in was_trainable):
                raise ValueError(
                    f"train.trainable: module {prefix!r} has no trainable parameter "
                    "(it is frozen by construction)"
                )
        for name, param in model.named_parameters():
            if not any(_matches(name, prefix) for prefix in trainable):
                param.requires_grad_(False)
    for name, param in model.named_parameters():
        if any(_matches(name, prefix) for prefix in freeze):
            param.requires_grad_(False)
    now_trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if not now_trainable:
        raise ValueError("train.trainable / train.freeze leave no trainable parameter")
    newly_frozen = was_trainable - now_trainable
    frozen_modules: List[str] = []
    for name, module in model.named_modules():
        if not name or any(_matches(name, m) for m in frozen_modules):
            continue
        params = [f"{name}.{n}" for n, _ in module.named_parameters()]
        if params and not set(params) & now_trainable and set(params) & newly_frozen:
            frozen_modules.append(name)
    if newly_frozen:
        logger.info(
            "Config froze %d parameter tensors; training %d: %s",
            len(newly_frozen),
            len(now_trainable),
            sorted(now_trainable) if len(now_trainable) <= MAX_NAMES_LOGGED else "...",
        )
    return frozen_modules


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


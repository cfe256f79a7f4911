"""Which parameters of a model train (no detectron2): modules frozen by construction, and
freezing by module name for partial fine-tuning (``train.trainable`` / ``train.freeze``)."""
import logging
from typing import List, Optional, Sequence

from torch import nn

from .listing import MAX_LISTED

logger = logging.getLogger(__name__)

__all__ = ["frozen_state_prefixes", "is_under", "set_trainable"]


def is_under(name: str, prefix: str) -> bool:
    """Whether the dotted ``name`` is ``prefix`` or lies under it."""
    return name == prefix or name.startswith(prefix + ".")


def frozen_state_prefixes(model: nn.Module) -> List[str]:
    """Sorted prefixes (with trailing dot) of the largest submodules of ``model`` whose
    parameters are all frozen, e.g. ``["backbone.adapter.backbone."]`` for the DINOv3 ViT."""
    prefixes: List[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p) for p in prefixes):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            prefixes.append(name + ".")
    return sorted(prefixes)


def set_trainable(
    model: nn.Module,
    *,
    trainable: Optional[Sequence[str]] = None,
    freeze: Sequence[str] = (),
) -> List[str]:
    """Freeze parameters by module-name prefix (before the optimizer is built).

    Parameters outside ``trainable`` are frozen, those inside keep their flag (the ViT stays
    frozen); then the ``freeze`` modules are frozen. The modules this leaves without trainable
    parameters are returned: they should run in eval mode (BatchNorm statistics, dropout).

    Args:
        model: the (unwrapped) model.
        trainable: module prefixes to train (``["sem_seg_head.predictor.class_embed"]``) or None.
        freeze: module prefixes to freeze (e.g. ``["backbone.adapter"]``).

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
            if not any(is_under(n, prefix) for n in was_trainable):
                raise ValueError(
                    f"train.trainable: module {prefix!r} has no trainable parameter "
                    "(it is frozen by construction)"
                )
        for name, param in model.named_parameters():
            if not any(is_under(name, prefix) for prefix in trainable):
                param.requires_grad_(False)
    for name, param in model.named_parameters():
        if any(is_under(name, prefix) for prefix in freeze):
            param.requires_grad_(False)
    now_trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if not now_trainable:
        raise ValueError("train.trainable / train.freeze leave no trainable parameter")
    newly_frozen = was_trainable - now_trainable
    # the largest all-frozen modules that this call froze (at least in part)
    frozen_modules = [
        prefix[:-1] for prefix in frozen_state_prefixes(model)
        if any(name.startswith(prefix) for name in newly_frozen)
    ]
    if newly_frozen:
        logger.info(
            "Config froze %d parameter tensors; training %d: %s",
            len(newly_frozen),
            len(now_trainable),
            sorted(now_trainable) if len(now_trainable) <= MAX_LISTED else "...",
        )
    return frozen_modules

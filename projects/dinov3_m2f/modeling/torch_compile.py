"""``torch.compile`` of a segmentation model's backbone and decode head, in place: the
``train.compile`` setting of the configs (plain PyTorch)."""
import inspect
import logging
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["COMPILED_PARTS", "compile_kwargs", "compile_parts"]

logger = logging.getLogger(__name__)

# The parts of a meta-architecture that are compiled. Each traces into one graph with the
# compiled op (tests/modeling/test_torch_compile.py); the rest stays eager: detectron2's input handling and
# the criterion's scipy matcher would break the graph.
COMPILED_PARTS = ("backbone", "sem_seg_head")
CompileSetting = Union[bool, None, Mapping[str, Any]]


def compile_kwargs(setting: CompileSetting) -> Optional[Dict[str, Any]]:
    """The ``torch.compile`` keyword arguments of a ``train.compile`` setting.

    Args:
        setting: False or None (no compilation), True (``torch.compile``'s defaults) or a mapping
            of ``torch.compile`` keyword arguments.

    Returns:
        None when nothing is compiled, else the keyword arguments.

    Raises:
        TypeError: ``setting`` is not a bool, None or a mapping, or names an argument that
            ``torch.compile`` does not take.
    """
    if setting is None or setting is False:
        return None
    if setting is True:
        return {}
    if not isinstance(setting, Mapping):
        raise TypeError(f"compile setting must be a bool or a mapping of torch.compile arguments, got {setting!r}")
    accepted = set(inspect.signature(torch.compile).parameters) - {"model"}
    unknown = sorted(set(setting) - accepted)
    if unknown:
        raise TypeError(f"compile setting: torch.compile takes no {unknown}; valid: {sorted(accepted)}")
    return dict(setting)


def compile_parts(model: nn.Module, setting: CompileSetting) -> None:
    """Compile ``model.backbone`` and ``model.sem_seg_head`` in place (:meth:`nn.Module.compile`).

    In-place compilation keeps every state-dict key (``torch.compile(model)`` would prefix them
    with ``_orig_mod.``), so checkpoints are the same with and without it. Each part compiles at its
    first call, and again for a new train/eval mode or input size: with the default
    ``dynamic=None`` torch marks the sizes that changed as dynamic, so evaluation at changing image
    sizes compiles a few times, then runs the dynamic graphs; ``{"dynamic": True}`` compiles for
    dynamic sizes from the start, and fixed-size inputs (training crops, sliding windows) compile
    once per mode.

    Args:
        model: a module with ``backbone`` and ``sem_seg_head`` submodules (the meta-architectures
            of ``dinov3_m2f.d2``).
        setting: False or None: nothing is compiled; True: ``torch.compile``'s defaults
            (Inductor); a mapping: ``torch.compile`` keyword arguments, e.g.
            ``{"backend": "aot_eager"}``, ``{"dynamic": True}``, ``{"mode": "max-autotune"}``.

    Raises:
        TypeError: see :func:`compile_kwargs`.
        AttributeError: ``model`` lacks one of :data:`COMPILED_PARTS`.
    """
    kwargs = compile_kwargs(setting)
    if kwargs is None:
        return
    missing = [name for name in COMPILED_PARTS if not isinstance(getattr(model, name, None), nn.Module)]
    if missing:
        raise AttributeError(f"{type(model).__name__} has no {missing} submodule to compile")
    for name in COMPILED_PARTS:
        getattr(model, name).compile(**kwargs)
    logger.info("Compiling %s with torch.compile(%s) at their first call", ", ".join(COMPILED_PARTS), kwargs)

"""Loading LazyConfig files with overrides that must name something the config knows."""
import inspect
import os
from typing import Callable, Optional, Sequence, Set

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

__all__ = ["check_override_keys", "load_config"]

_MISSING = object()
_NAMED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _accepted_kwargs(target) -> Optional[Set[str]]:
    """Keyword names that the target of a LazyCall node accepts; None if it accepts any name.

    For a class whose ``__init__`` forwards ``**kwargs`` to its base class, the names of the
    bases' ``__init__`` are followed up the MRO until one takes no ``**kwargs``.
    """
    if isinstance(target, str):
        target = locate(target)
    if inspect.isclass(target):
        functions: Sequence[Callable] = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
    else:
        functions = [target]
    names: Set[str] = set()
    for function in functions:
        params = inspect.signature(function).parameters.values()
        names.update(p.name for p in params if p.kind in _NAMED_KINDS)
        if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
            return names
    return None


def check_override_keys(cfg: DictConfig, overrides: Sequence[str], *, source: str = "the config") -> None:
    """Raise KeyError for a ``key=value`` override that names nothing the config knows.

    A key is accepted when it exists in the config, or when its parent is a LazyCall node whose
    target accepts it as a keyword argument (an optional constructor argument left at its default).

    Args:
        cfg: the loaded config.
        overrides: ``key=value`` strings (Hydra override syntax, as on the train_net command line).
        source: how to name the config in the error (e.g. its file).
    """
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
        if isinstance(parent, DictConfig) and "_target_" in parent:
            accepted = _accepted_kwargs(parent._target_)
            if accepted is None or leaf in accepted:
                continue
        raise KeyError(f"Config override '{override}': {source} has no key '{key}'")


def load_config(config_file: str, *, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a LazyConfig file and apply ``key=value`` overrides (see
    :func:`check_override_keys`: unknown keys are rejected)."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config_file {config_file} does not exist")
    cfg = LazyConfig.load(config_file)
    check_override_keys(cfg, overrides, source=config_file)
    return LazyConfig.apply_overrides(cfg, list(overrides))

"""Every training process must run the same config: machines started with other overrides (another
``max_iter``) would otherwise wait for each other in a collective that never comes, or train
different models in one job.

The resolved config is flattened to ``key -> text`` and gathered from every process at start;
each process compares all of them with rank 0's and, if any differ, raises the same error naming
the keys. Every key is compared, paths included: the processes write and resume from one
``train.output_dir``, which must be the same folder (a shared file system) on every machine.
"""
import inspect
from typing import Any, Dict, List

from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf

from dinov3_m2f.listing import short_list

__all__ = ["ConfigMismatchError", "check_same_config", "differing_keys", "flatten_config"]


class ConfigMismatchError(ValueError):
    """The processes of one run resolved different configs; the message names the keys."""


def _text(value: Any) -> str:
    """A rendering of a config value that is the same in every process (classes and functions
    by name, not by their address)."""
    if inspect.isclass(value) or inspect.isroutine(value):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def _flatten(value: Any, prefix: str, out: Dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}", out)
    else:
        out[prefix] = _text(value)


def flatten_config(cfg: DictConfig) -> Dict[str, str]:
    """``{"train.max_iter": "8", ...}`` for the resolved config (interpolations applied)."""
    out: Dict[str, str] = {}
    _flatten(OmegaConf.to_container(cfg, resolve=True), "", out)
    return out


def differing_keys(configs: List[Dict[str, str]]) -> List[str]:
    """The keys whose value differs between the flattened ``configs`` (or is missing in some)."""
    keys = sorted(set().union(*configs))
    return [k for k in keys if len({c.get(k) for c in configs}) > 1]


def check_same_config(cfg: DictConfig) -> None:
    """Compare the resolved config of every process (nothing to do in a single process).

    Raises:
        ConfigMismatchError: on every process, naming each differing key with its values per
            rank.
    """
    if comm.get_world_size() == 1:
        return
    configs = comm.all_gather(flatten_config(cfg))
    keys = differing_keys(configs)
    if not keys:
        return
    details = []
    for key in keys:
        values = ", ".join(f"rank {r}: {c.get(key, '<absent>')}" for r, c in enumerate(configs))
        details.append(f"{key} ({values})")
    raise ConfigMismatchError(
        f"The processes of this run were given different configs; differing keys: "
        f"{short_list(details, noun='keys')}. Start every machine with the same config file "
        "and overrides"
    )

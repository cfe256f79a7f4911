"""What a training config may hold, checked when it loads (OmegaConf only; no detectron2).

A wrong value should fail at load time with the key's name, not deep in the LR scheduler after the
model is built, and never after days of training at the final evaluation:

* :func:`check_override_keys`: every ``key=value`` override names something the config knows;
* :class:`TrainSchema`: the type of every ``train.*`` key (OmegaConf structured config) and its
  range; the values themselves live in ``configs/common/train.py``;
* :func:`check_data_fields`: the types and ranges of the data loader and dataset fields, and
  that the class names of the training and test datasets agree with ``num_classes``.
"""
import inspect
import pydoc
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import torch
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from .modeling.torch_compile import compile_kwargs

__all__ = [
    "AMP_DTYPES",
    "DEVICE_PATTERN",
    "ConfigValueError",
    "TrainSchema",
    "check_config",
    "check_data_fields",
    "check_override_keys",
]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Device strings of train.device besides "auto".
DEVICE_PATTERN = r"cpu|cuda(:\d+)?"
BEST_MODES = ("max", "min")
# Signals a process cannot handle, refused in train.preemption_signals.
UNCATCHABLE_SIGNALS = ("SIGKILL", "SIGSTOP")

_ABSENT = object()
_NAMED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class ConfigValueError(ValueError):
    """A config value has the wrong type or range; the message names the key."""


def _at_least(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigValueError(f"{key} must be >= {minimum}, got {value}")


def _one_of(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigValueError(f"{key} must be one of {list(choices)}, got {value!r}")


@dataclass
class AmpSchema:
    enabled: bool = MISSING
    dtype: str = MISSING

    def __post_init__(self):
        _one_of("train.amp.dtype", self.dtype, list(AMP_DTYPES))


@dataclass
class ClipGradSchema:
    enabled: bool = MISSING
    max_norm: float = MISSING
    norm_type: float = MISSING

    def __post_init__(self):
        _at_least("train.clip_grad.max_norm", self.max_norm, 0)
        if not self.norm_type > 0:
            raise ConfigValueError(f"train.clip_grad.norm_type must be > 0, got {self.norm_type}")


@dataclass
class CheckpointerSchema:
    period: int = MISSING
    max_to_keep: Optional[int] = MISSING

    def __post_init__(self):
        _at_least("train.checkpointer.period", self.period, 1)
        if self.max_to_keep is not None:
            _at_least("train.checkpointer.max_to_keep", self.max_to_keep, 1)


@dataclass
class BestCheckpointSchema:
    metric: str = MISSING
    mode: str = MISSING

    def __post_init__(self):
        _one_of("train.best_checkpoint.mode", self.mode, BEST_MODES)


@dataclass
class EarlyStoppingSchema:
    patience: int = MISSING

    def __post_init__(self):
        _at_least("train.early_stopping.patience", self.patience, 1)


@dataclass
class TrainSchema:
    """The keys of ``cfg.train`` and their types (values: ``configs/common/train.py``)."""

    output_dir: str = MISSING
    init_checkpoint: str = MISSING
    init_partial: bool = MISSING
    max_iter: int = MISSING
    device: str = MISSING
    amp: AmpSchema = MISSING
    clip_grad: ClipGradSchema = MISSING
    ddp: Dict[str, Any] = MISSING
    checkpointer: CheckpointerSchema = MISSING
    full_checkpoint: bool = MISSING
    eval_period: int = MISSING
    best_checkpoint: Optional[BestCheckpointSchema] = MISSING
    early_stopping: Optional[EarlyStoppingSchema] = MISSING
    trainable: Optional[List[str]] = MISSING
    freeze: List[str] = MISSING
    grad_accum_steps: int = MISSING
    log_period: int = MISSING
    seed: int = MISSING
    cudnn_benchmark: bool = MISSING
    preemption_signals: List[str] = MISSING
    # False, True or a mapping of torch.compile arguments (checked in __post_init__)
    compile: Any = MISSING

    def __post_init__(self):
        for key, minimum in (("max_iter", 1), ("eval_period", 0), ("grad_accum_steps", 1),
                             ("log_period", 1), ("seed", 0)):
            _at_least(f"train.{key}", getattr(self, key), minimum)
        if self.device != "auto" and not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ConfigValueError(
                f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {self.device!r}"
            )
        for name in self.preemption_signals:
            if name not in signal.Signals.__members__ or name in UNCATCHABLE_SIGNALS:
                raise ConfigValueError(
                    f"train.preemption_signals: {name!r} is not a signal name this process can "
                    "handle (e.g. 'SIGTERM', 'SIGUSR1', 'SIGINT')"
                )
        try:
            compile_kwargs(self.compile)
        except TypeError as error:
            raise ConfigValueError(f"train.compile: {error}") from None


def check_train(train: DictConfig) -> None:
    """Check ``cfg.train`` against :class:`TrainSchema` (interpolations resolved first).

    Raises:
        ConfigValueError: a missing or unknown key, a value of the wrong type or out of range;
            names the key, e.g. ``train.max_iter``.
    """
    values = OmegaConf.to_container(train, resolve=True)
    try:
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainSchema), values))
    except ConfigKeyError as e:
        raise ConfigValueError(f"train.{e.full_key}: not a known key of train") from None
    except MissingMandatoryValue as e:
        raise ConfigValueError(f"train.{e.full_key} must be set") from None
    except ValidationError as e:
        raise ConfigValueError(f"train.{e.full_key}: {e.msg.splitlines()[0]}") from None


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT)


def _check_int(cfg: DictConfig, key: str, minimum: int) -> None:
    value = _select(cfg, key)
    if value is _ABSENT:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigValueError(f"{key} must be an int >= {minimum}, got {value!r}")
    _at_least(key, value, minimum)


def _class_names(names: Any, lookup: Callable[[str], Optional[Sequence[str]]]) -> Optional[List[str]]:
    """The class names of a ``dataset.names`` node: a registered name's (via ``lookup``), or the
    ``class_names`` of a registration call (``register_folder_dataset``); None if unknown."""
    if isinstance(names, DictConfig):
        classes = names.get("class_names")
        return None if classes is None else list(classes)
    if isinstance(names, ListConfig) and len(names) > 0:
        names = names[0]  # every dataset of a list shares the classes of the first (detectron2)
    if isinstance(names, str):
        classes = lookup(names)
        return None if classes is None else list(classes)
    return None


def check_data_fields(cfg: DictConfig, *, lookup: Callable[[str], Optional[Sequence[str]]]) -> None:
    """Check the data fields of a config: integer sizes and counts, and that the class names of
    ``dataloader.train`` / ``dataloader.test`` datasets number ``num_classes``.

    Args:
        cfg: the loaded config (absent keys are not checked).
        lookup: registered dataset name -> its class names, None when not (yet) registered.

    Raises:
        ConfigValueError: names the key and the values that disagree.
    """
    for key, minimum in (("dataloader.train.total_batch_size", 1), ("dataloader.train.num_workers", 0),
                         ("dataloader.test.num_workers", 0), ("dataloader.train.mapper.num_classes", 1),
                         ("dataloader.train.mapper.max_bad_samples", 0), ("model.num_classes", 1)):
        _check_int(cfg, key, minimum)
    num_classes = _select(cfg, "dataloader.train.mapper.num_classes")
    model_classes = _select(cfg, "model.num_classes")
    if num_classes is not _ABSENT and model_classes not in (_ABSENT, num_classes):
        raise ConfigValueError(
            f"model.num_classes={model_classes} but dataloader.train.mapper.num_classes={num_classes}"
        )
    ignore = _select(cfg, "dataloader.train.mapper.ignore_label")
    if isinstance(num_classes, int) and isinstance(ignore, int) and 0 <= ignore < num_classes:
        raise ConfigValueError(
            f"dataloader.train.mapper.ignore_label={ignore} is a class id (num_classes={num_classes})"
        )
    expected = num_classes if num_classes is not _ABSENT else model_classes
    for split in ("train", "test"):
        key = f"dataloader.{split}.dataset.names"
        classes = _class_names(_select(cfg, key), lookup)
        if classes is not None and expected is not _ABSENT and len(classes) != expected:
            raise ConfigValueError(
                f"{key}: the dataset has {len(classes)} class names {classes} but num_classes is "
                f"{expected} (dataloader.train.mapper.num_classes / model.num_classes); give one "
                "class name per class id"
            )


def check_config(cfg: DictConfig, *, lookup: Callable[[str], Optional[Sequence[str]]]) -> None:
    """:func:`check_train` (when the config has ``train``) and :func:`check_data_fields`."""
    if "train" in cfg:
        check_train(cfg.train)
    check_data_fields(cfg, lookup=lookup)


def _accepted_kwargs(target) -> Optional[Set[str]]:
    """Keyword names that the target of a LazyCall node accepts; None if it accepts any name.

    For a class whose ``__init__`` forwards ``**kwargs`` to its base class, the names of the
    bases' ``__init__`` are followed up the MRO until one takes no ``**kwargs``.
    """
    if isinstance(target, str):
        target = pydoc.locate(target)
        if target is None:
            return None
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
        if OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
        if isinstance(parent, DictConfig) and "_target_" in parent:
            accepted = _accepted_kwargs(parent._target_)
            if accepted is None or leaf in accepted:
                continue
        raise KeyError(f"Config override '{override}': {source} has no key '{key}'")

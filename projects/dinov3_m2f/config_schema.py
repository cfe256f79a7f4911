"""What a training config may hold, checked when it loads (OmegaConf only; no detectron2).

A wrong value should fail at load time with the key's name, not deep in the LR scheduler after the
model is built, and never after days of training at the final evaluation:

* :func:`check_override_keys`: every ``key=value`` override names something the config knows;
* :class:`TrainSchema`: every ``train.*`` key, its default, type (OmegaConf structured config)
  and range; ``configs/common/train.py`` holds the defaults (:func:`train_defaults`);
* :func:`check_data_fields`: the types and ranges of the data loader and dataset fields, and
  that the class names of the training and test datasets agree with ``num_classes``.
"""
import dataclasses
import inspect
import pydoc
import signal
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set

import torch
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from . import config_resolvers  # noqa: F401  (the resolvers of interpolated train values)
from .devices import check_device_name
from .modeling.torch_compile import compile_kwargs

__all__ = [
    "AMP_DTYPES",
    "ConfigValueError",
    "TrainSchema",
    "check_config",
    "check_data_fields",
    "check_override_keys",
    "train_defaults",
]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
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
    enabled: bool = True
    # "bfloat16" (no loss scaling) or "float16" (with a GradScaler).
    dtype: str = "bfloat16"

    def __post_init__(self):
        _one_of("train.amp.dtype", self.dtype, list(AMP_DTYPES))


@dataclass
class ClipGradSchema:
    enabled: bool = True
    # Mask2Former: full-model 0.01.
    max_norm: float = 0.01
    norm_type: float = 2.0

    def __post_init__(self):
        _at_least("train.clip_grad.max_norm", self.max_norm, 0)
        if not self.norm_type > 0:
            raise ConfigValueError(f"train.clip_grad.norm_type must be > 0, got {self.norm_type}")


@dataclass
class CheckpointerSchema:
    """detectron2's ``PeriodicCheckpointer`` arguments."""

    period: int = 5000
    max_to_keep: Optional[int] = 3

    def __post_init__(self):
        _at_least("train.checkpointer.period", self.period, 1)
        if self.max_to_keep is not None:
            _at_least("train.checkpointer.max_to_keep", self.max_to_keep, 1)


@dataclass
class BestCheckpointSchema:
    metric: str = "sem_seg/mIoU"
    mode: str = "max"

    def __post_init__(self):
        _one_of("train.best_checkpoint.mode", self.mode, BEST_MODES)


@dataclass
class EarlyStoppingSchema:
    # Evaluations in a row without a new best value that end training.
    patience: int = MISSING

    def __post_init__(self):
        _at_least("train.early_stopping.patience", self.patience, 1)


def _ddp_defaults() -> Dict[str, Any]:
    return dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False)


def _preemption_signal_defaults() -> List[str]:
    return ["SIGTERM", "SIGUSR1", "SIGINT"]


@dataclass
class TrainSchema:
    """``cfg.train``, read by ``tools/train_net.py``: the one definition of its keys, their
    defaults (``configs/common/train.py`` is :func:`train_defaults`), types and ranges."""

    output_dir: str = "./output"
    # Trainable-only or full checkpoint to start from (or to evaluate with --eval-only). It must
    # set every trainable weight, with no unknown key and no shape difference, or training stops
    # before iteration 0 listing the keys.
    init_checkpoint: str = ""
    # True: load only the matching weights of init_checkpoint (another num_classes, backbone and
    # adapter only, another project's head converted by tools/convert_weights.py) and log every
    # key skipped; the rest keeps its initialisation. --resume and --eval-only are always strict.
    init_partial: bool = False
    max_iter: int = 160000
    # "cuda", "cpu", "cuda:<i>" or "auto" (CUDA when available); see dinov3_m2f.devices.
    device: str = "cuda"
    # Autocast of training and evaluation.
    amp: AmpSchema = field(default_factory=AmpSchema)
    # Global gradient-norm clipping over all trainable parameters.
    clip_grad: ClipGradSchema = field(default_factory=ClipGradSchema)
    # detectron2's create_ddp_model keyword arguments.
    ddp: Dict[str, Any] = field(default_factory=_ddp_defaults)
    checkpointer: CheckpointerSchema = field(default_factory=CheckpointerSchema)
    # False: checkpoints hold trainable weights + optimizer/scheduler state; the frozen backbone is
    # rebuilt from model.backbone.weights. True: store the frozen backbone too.
    full_checkpoint: bool = False
    # Iterations between evaluations; 0: evaluate only after training.
    eval_period: int = 5000
    # Keep `model_best.pth` by a validation metric, checked after every evaluation; None disables.
    best_checkpoint: Optional[BestCheckpointSchema] = field(default_factory=BestCheckpointSchema)
    # Stop after `patience` evaluations without improvement of best_checkpoint's metric
    # (e.g. dict(patience=5)); None disables. Needs best_checkpoint and eval_period > 0.
    early_stopping: Optional[EarlyStoppingSchema] = None
    # Module-name prefixes to train; everything else is frozen (e.g.
    # ["sem_seg_head.predictor.class_embed"] for a classifier-only fine-tune). None = all trainable
    # modules. Applied before the optimizer is built; frozen modules run in eval mode.
    trainable: Optional[List[str]] = None
    # Module-name prefixes to freeze (e.g. ["backbone.adapter"]).
    freeze: List[str] = field(default_factory=list)
    # Micro-batches (of dataloader.train.total_batch_size images) per optimizer step; one
    # iteration = one step, so the effective batch is grad_accum_steps x total_batch_size.
    grad_accum_steps: int = 1
    log_period: int = 20
    # Seeds the data order, augmentations and per-iteration random state (exact --resume).
    seed: int = 42
    cudnn_benchmark: bool = False
    # torch.compile of the model's backbone and head, for training and evaluation: False, True
    # (Inductor), or torch.compile arguments, e.g. dict(dynamic=True) for evaluation at changing
    # image sizes (each new size compiles again until torch makes the sizes dynamic).
    compile: Any = False
    # Signals that stop training cleanly: every process finishes its iteration, a checkpoint is
    # written and the process exits with code 75 (requeue, then --resume); a second signal exits
    # at once. See docs/cluster.md.
    preemption_signals: List[str] = field(default_factory=_preemption_signal_defaults)

    def __post_init__(self):
        for key, minimum in (("max_iter", 1), ("eval_period", 0), ("grad_accum_steps", 1),
                             ("log_period", 1), ("seed", 0)):
            _at_least(f"train.{key}", getattr(self, key), minimum)
        try:
            check_device_name(self.device)
        except ValueError as error:
            raise ConfigValueError(f"train.device: {error}") from None
        if self.early_stopping is not None and self.best_checkpoint is None:
            raise ConfigValueError("train.early_stopping needs train.best_checkpoint (its metric and mode)")
        if self.early_stopping is not None and self.eval_period == 0:
            raise ConfigValueError("train.early_stopping needs periodic evaluation: train.eval_period > 0")
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


def train_defaults() -> Dict[str, Any]:
    """The defaults of :class:`TrainSchema` as a plain nested dict (``configs/common/train.py``)."""
    return OmegaConf.to_container(OmegaConf.structured(TrainSchema))


def _schema_class(annotation: Any) -> Optional[type]:
    """The dataclass of a field annotation (``X`` or ``Optional[X]``); None for other types."""
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _unset_keys(schema: type, values: Mapping[str, Any], prefix: str) -> List[str]:
    """The keys of the dataclass ``schema`` (and of its dataclass fields) absent from ``values``."""
    unset = []
    for spec in dataclasses.fields(schema):
        nested = _schema_class(spec.type)
        if spec.name not in values:
            unset.append(prefix + spec.name)
        elif nested is not None and isinstance(values[spec.name], Mapping):
            unset += _unset_keys(nested, values[spec.name], f"{prefix}{spec.name}.")
    return unset


def check_train(train: DictConfig) -> None:
    """Check ``cfg.train`` against :class:`TrainSchema` (interpolations resolved first).

    Raises:
        ConfigValueError: a missing or unknown key, a value of the wrong type or out of range;
            names the key, e.g. ``train.max_iter``.
    """
    values = OmegaConf.to_container(train, resolve=True)
    unset = _unset_keys(TrainSchema, values, "train.")
    if unset:
        raise ConfigValueError(f"{unset[0]} must be set (the default: configs/common/train.py)")
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
    """Keyword names that the target of a LazyCall node accepts (for a class: its ``__init__``'s,
    own or inherited); None when it takes ``**kwargs``. Such a node accepts any key here, and a
    misspelt one fails, naming itself, when the node is instantiated."""
    if isinstance(target, str):
        target = pydoc.locate(target)
        if target is None:
            return None
    params = inspect.signature(target).parameters.values()
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in _NAMED_KINDS}


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

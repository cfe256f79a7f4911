"""Reading DINOv3 ViT checkpoints without their tensor data: which files, keys and shapes.

Sources (all read lazily; a tensor's data is touched only when :meth:`tensors` hands it out):

* a Meta ``.pth`` / ``.pt`` file, read with ``torch.load(mmap=True, weights_only=True)`` (files that
  are not in torch's zip format are read whole), either a raw state dict or a dict wrapping it under
  ``"model"``, ``"teacher"``, ``"state_dict"`` or ``"module"``; ``backbone.`` / ``module.`` key
  prefixes are handled;
* a ``.safetensors`` file with Meta or Hugging Face key names (safetensors' ``safe_open``);
* a Hugging Face model directory: ``config.json`` plus ``model.safetensors`` or
  ``model.safetensors.index.json`` with its shards, read one shard at a time.

:func:`open_checkpoint` maps every tensor of the files to the official key (and q/k/v third) it
fills; :mod:`.dinov3` checks and loads them.
"""
import contextlib
import dataclasses
import json
import logging
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple, Union

from torch import Tensor

from ..listing import short_list
from .dinov3_hf import K_BIAS_CHUNK, QKV_NAMES, has_gated_mlp, is_hf_state_dict, official_key, official_shape
from .files import safe_torch_load

logger = logging.getLogger(__name__)

__all__ = ["Checkpoint", "Entry", "MAX_KEYS_IN_ERROR", "TensorFile", "assembled_shapes", "open_checkpoint"]

TensorGetter = Callable[[str], Tensor]

HF_CONFIG_NAME = "config.json"
HF_WEIGHTS_NAME = "model.safetensors"
HF_INDEX_NAME = "model.safetensors.index.json"
# Keys under which training checkpoints wrap the backbone state dict (checked in this order).
WRAPPER_KEYS = ("teacher", "model", "state_dict", "module")
# Key prefixes stripped from checkpoint keys (a backbone inside a larger model, DDP).
STRIPPED_PREFIXES = ("backbone.", "module.")
# First bytes of a zip archive: torch.save's format since torch 1.6, the only one torch can mmap.
_ZIP_MAGIC = b"PK\x03\x04"
# Number of key names quoted in error messages.
MAX_KEYS_IN_ERROR = 5


class _PthFile:
    """A Meta ``.pth``/``.pt`` file, mapped with ``torch.load(mmap=True, weights_only=True)``.

    Attributes:
        path: the file.
        shapes: key in the file -> shape, read without touching tensor data.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            mapped = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if not mapped:
            logger.info("%s is not a zip-format torch file: it is read whole instead of mapped", path)
        loaded = safe_torch_load(path, what="DINOv3 checkpoint", mmap=mapped)
        self._tensors = _unwrap_state_dict(loaded, path)
        self.shapes = {key: list(value.shape) for key, value in self._tensors.items()}

    @contextlib.contextmanager
    def tensors(self) -> Iterator[TensorGetter]:
        """The context gives ``key -> tensor`` (a view of the mapped file)."""
        yield self._tensors.__getitem__


class _SafetensorsFile:
    """A ``.safetensors`` file, opened with safetensors' ``safe_open`` (tensors are views of the mapped file).

    Attributes:
        path: the file.
        shapes: key in the file -> shape, read from the header.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with self._open() as handle:
            self.shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(self.path, framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"Could not read safetensors file {self.path!r}: {exc}") from exc
        with handle:
            yield handle

    @contextlib.contextmanager
    def tensors(self) -> Iterator[TensorGetter]:
        """Open the file; the context gives ``key -> tensor``."""
        with self._open() as handle:
            yield handle.get_tensor


# A checkpoint file whose tensors are read one at a time.
TensorFile = Union[_PthFile, _SafetensorsFile]


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Could not read JSON file {path!r}: {exc}") from exc


def _unwrap_state_dict(obj: Any, path: str) -> Dict[str, Tensor]:
    """Find the tensor dict inside a (possibly wrapped) training checkpoint."""
    while isinstance(obj, Mapping):
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if wrapper is None:
            break
        logger.info("Using the %r entry of checkpoint %s", wrapper, path)
        obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path!r} is not a DINOv3 checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    not_tensors = [key for key, value in obj.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path!r} is not a DINOv3 state dict: non-tensor entries {not_tensors[:MAX_KEYS_IN_ERROR]}"
        )
    return dict(obj)


def _strip_prefixes(names: Iterable[str], path: str) -> Dict[str, str]:
    """Map checkpoint keys without the :data:`STRIPPED_PREFIXES` to the keys in the file."""
    keys = {name: name for name in names}
    for prefix in STRIPPED_PREFIXES:
        matching = [key for key in keys if key.startswith(prefix)]
        if not matching:
            continue
        dropped = len(keys) - len(matching)
        if dropped:
            logger.info(
                "Checkpoint %s: keeping the %d %r keys, dropping %d others", path, len(matching), prefix, dropped
            )
        keys = {key[len(prefix) :]: keys[key] for key in matching}
    return keys


def _hf_directory(path: str) -> Tuple[List[TensorFile], Optional[Tuple[str, Dict[str, Any]]]]:
    """The weight files of a Hugging Face model directory and its ``(config path, config)``, if any."""
    config_path = os.path.join(path, HF_CONFIG_NAME)
    config = (config_path, _read_json(config_path)) if os.path.isfile(config_path) else None
    single = os.path.join(path, HF_WEIGHTS_NAME)
    index_path = os.path.join(path, HF_INDEX_NAME)
    if os.path.isfile(single):
        return [_SafetensorsFile(single)], config
    if not os.path.isfile(index_path):
        raise ValueError(f"Directory {path!r} has neither {HF_WEIGHTS_NAME} nor {HF_INDEX_NAME}")
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, Mapping) or not weight_map:
        raise ValueError(f"{index_path!r} has no 'weight_map'")
    # Checked by name (a shard may be a symbolic link, as in the Hugging Face cache): a plain file
    # name of the folder, no absolute path, no "..", no sub-folder.
    folder = os.path.normpath(path)
    outside = sorted(str(shard) for shard in set(weight_map.values())
                     if not isinstance(shard, str) or os.path.isabs(shard)
                     or os.path.dirname(os.path.normpath(os.path.join(folder, shard))) != folder)
    if outside:
        raise ValueError(f"{index_path!r} names shards outside the model folder {path!r}: "
                         f"{short_list(outside)}; shards must be files of that folder")
    shards = {shard: _SafetensorsFile(os.path.join(path, shard)) for shard in sorted(set(weight_map.values()))}
    missing = sorted(key for key, shard in weight_map.items() if key not in shards[shard].shapes)
    if missing:
        raise ValueError(f"Shards listed in {index_path!r} lack keys {missing[:MAX_KEYS_IN_ERROR]}")
    return list(shards.values()), config


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a checkpoint file and the model tensor (or qkv third) it fills."""

    name: str  # key in the file
    key: str  # official key
    shape: List[int]  # shape under the official key (of one third for a q/k/v projection)
    chunk: Optional[int] = None  # q/k/v third of the fused qkv tensor it fills; None = whole tensor


@dataclasses.dataclass
class Checkpoint:
    """Everything about a checkpoint but its tensor data."""

    path: str
    parts: List[Tuple[TensorFile, List[Entry]]]  # files in reading order, with their entries
    hf_naming: bool
    hf_config: Optional[Tuple[str, Dict[str, Any]]]  # (path, content) of config.json


def open_checkpoint(path: str) -> Checkpoint:
    hf_config = None
    if os.path.isdir(path):
        files, hf_config = _hf_directory(path)
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"DINOv3 checkpoint {path!r} does not exist")
    elif path.endswith(".safetensors"):
        files = [_SafetensorsFile(path)]
    else:
        files = [_PthFile(path)]
    located = {name: file for file in files for name in file.shapes}
    names = _strip_prefixes(located, path)  # checkpoint key -> key in the file
    hf_naming = is_hf_state_dict(names)
    gated = hf_naming and has_gated_mlp(names)
    entries: Dict[int, List[Entry]] = {id(file): [] for file in files}
    for key, name in names.items():
        shape = located[name].shapes[name]
        if hf_naming:
            target = official_key(key, gated=gated)
            entry = Entry(name, target.key, official_shape(key, shape), target.chunk)
        else:
            entry = Entry(name, key, shape)
        entries[id(located[name])].append(entry)
    return Checkpoint(path, [(file, entries[id(file)]) for file in files], hf_naming, hf_config)


def assembled_shapes(checkpoint: Checkpoint) -> Tuple[Dict[str, List[int]], Set[str]]:
    """Official key -> shape of the checkpoint, with q/k/v projections fused.

    Returns:
        The shapes, and the fused qkv biases whose k third is absent (HF files drop it: it stays 0).
    """
    shapes: Dict[str, List[int]] = {}
    thirds: Dict[str, Dict[int, List[int]]] = {}
    for _, entries in checkpoint.parts:
        for entry in entries:
            if entry.chunk is None:
                shapes[entry.key] = entry.shape
            else:
                thirds.setdefault(entry.key, {})[entry.chunk] = entry.shape
    partial = set()
    for key, chunks in thirds.items():
        absent = set(range(len(QKV_NAMES))) - set(chunks)
        may_be_absent = {K_BIAS_CHUNK} if key.endswith(".bias") else set()
        if absent - may_be_absent or len({tuple(shape) for shape in chunks.values()}) != 1:
            found = {QKV_NAMES[chunk]: shape for chunk, shape in sorted(chunks.items())}
            raise ValueError(
                f"{checkpoint.path!r}: {key} is made from the projections {found} (name: shape); expected "
                f"{list(QKV_NAMES)} of one shape (the k bias may be absent)"
            )
        third = next(iter(chunks.values()))
        shapes[key] = [third[0] * len(QKV_NAMES), *third[1:]]  # [3 * D, ...]
        if absent:
            partial.add(key)
    return shapes, partial

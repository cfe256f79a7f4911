"""DINOv3 checkpoint files read tensor by tensor (used by :mod:`.dinov3`).

Meta ``.pth`` files are mapped with ``torch.load(mmap=True, weights_only=True)``, ``.safetensors``
files opened with ``safe_open``, Hugging Face directories read shard by shard (their index may only
name files of the model folder). :class:`_PageReleaser` hands the file pages behind copied tensors
back to the kernel, so the resident set stays about the size of the model.
"""
import contextlib
import ctypes
import json
import logging
import mmap
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from torch import Tensor

from ..listing import MAX_LISTED
from .files import safe_torch_load

logger = logging.getLogger(__name__)

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
_MAX_KEYS_IN_ERROR = 5


# ---------------------------------------------------------------------------- mapped file pages
def _load_libc() -> Optional[ctypes.CDLL]:
    if not hasattr(mmap, "MADV_DONTNEED"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_LIBC = _load_libc()


class _PageReleaser:
    """Drops this process's mapping of the file pages behind tensors that were read from a file.

    The pages stay in the kernel's page cache (and are mapped again if touched); the process's
    resident set no longer counts them. Only pages inside the mappings of that one file, listed in
    ``/proc/self/maps`` when the releaser is made, are touched, so memory of any other kind is never
    affected; without ``/proc`` or ``madvise`` nothing is released.

    Args:
        path: the file the tensors are views of (already mapped).
    """

    def __init__(self, path: str) -> None:
        self._ranges: List[Tuple[int, int]] = []
        if _LIBC is None:
            return
        real_path = os.path.realpath(path)
        try:
            with open("/proc/self/maps", encoding="utf-8") as maps:
                for line in maps:
                    # "start-end perms offset dev inode pathname"
                    fields = line.rstrip("\n").split(maxsplit=5)
                    if len(fields) == 6 and fields[5] == real_path:
                        start, end = fields[0].split("-")
                        self._ranges.append((int(start, 16), int(end, 16)))
        except OSError:
            self._ranges = []

    def __call__(self, tensor: Tensor) -> None:
        """Release the whole pages of ``tensor`` that lie in the file's mappings."""
        begin = tensor.data_ptr()
        end = begin + tensor.nbytes
        for low, high in self._ranges:
            start = -(-max(begin, low) // mmap.PAGESIZE) * mmap.PAGESIZE  # rounded up to a page
            stop = min(end, high) // mmap.PAGESIZE * mmap.PAGESIZE
            if stop > start and _LIBC.madvise(start, stop - start, mmap.MADV_DONTNEED) != 0:
                logger.debug("madvise failed (errno %d): pages stay resident", ctypes.get_errno())


# ---------------------------------------------------------------------------- reading files
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
_TensorFile = Union[_PthFile, _SafetensorsFile]


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
            f"{path!r} is not a DINOv3 state dict: non-tensor entries {not_tensors[:_MAX_KEYS_IN_ERROR]}"
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


def _hf_directory(path: str) -> Tuple[List[_TensorFile], Optional[Tuple[str, Dict[str, Any]]]]:
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
        raise ValueError(f"{index_path!r} names shards outside the model folder {path!r}: {outside[:MAX_LISTED]}; "
                         "shards must be files of that folder")
    shards = {shard: _SafetensorsFile(os.path.join(path, shard)) for shard in sorted(set(weight_map.values()))}
    missing = sorted(key for key, shard in weight_map.items() if key not in shards[shard].shapes)
    if missing:
        raise ValueError(f"Shards listed in {index_path!r} lack keys {missing[:_MAX_KEYS_IN_ERROR]}")
    return list(shards.values()), config

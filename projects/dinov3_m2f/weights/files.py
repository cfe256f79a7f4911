"""Checkpoint files read and written safely (no detectron2).

Files are read without ever unpickling code (Mask2Former ``.pkl`` files go through a numpy-only
unpickler), written atomically and never holding NaN or Inf, and a state dict that does not fit a
model is described key by key.
"""
import logging
import pickle
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from ..atomic_files import atomic_torch_save

logger = logging.getLogger(__name__)

__all__ = [
    "PICKLE_EXTENSIONS",
    "SAFETENSORS_EXTENSION",
    "TORCH_LOAD_ERRORS",
    "describe_key_mismatch",
    "load_checkpoint_file",
    "non_finite_tensors",
    "safe_numpy_pickle_load",
    "safe_torch_load",
    "save_finite",
]

# What torch.load(weights_only=True) raises for a truncated, corrupt or foreign file, or for one
# whose pickle asks for anything but tensors and plain containers (refused, never executed).
TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    IndexError,
    KeyError,
    AttributeError,
    TypeError,
)



# Extensions that may only be read with pickle (arbitrary code execution); refused.
PICKLE_EXTENSIONS = (".pkl", ".pickle")
SAFETENSORS_EXTENSION = ".safetensors"
# How many tensors the error of save_finite names.
_MAX_NAMED_TENSORS = 10


def safe_torch_load(path: str, *, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one error naming the file.

    Args:
        path: the file to read.
        what: what the file is, for the error message (e.g. ``"DINOv3 checkpoint"``).
        mmap: map the file instead of reading it (``torch.load(mmap=True)``; zip-format files only):
            tensors are then views of the file's pages, read when first touched.

    Returns:
        The loaded object (tensors, numbers, strings and containers only).

    Raises:
        ValueError: the file is truncated, corrupt, not a torch file, or holds pickled code.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except TORCH_LOAD_ERRORS as exc:
        raise ValueError(f"Could not read {what} {path} with torch.load(weights_only=True): {exc}") from exc


# The globals a pickle of numpy arrays in plain containers refers to (numpy 1 and 2 module names).
_NUMPY_PICKLE_GLOBALS = frozenset(
    [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # protocol 5: arrays rebuilt from an in-band buffer
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
    ]
)
# Protocol-2 pickles written by Python 3 store bytes as ``_codecs.encode(text, "latin1")``.
_BYTES_ENCODING = "latin1"


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """The only form of ``_codecs.encode`` a numpy pickle uses: latin-1 text -> bytes."""
    if not isinstance(text, str) or encoding != _BYTES_ENCODING:
        raise pickle.UnpicklingError(
            f"_codecs.encode is only accepted for {_BYTES_ENCODING!r} text, got {type(text).__name__}, {encoding!r}"
        )
    return text.encode(_BYTES_ENCODING)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays, numpy scalars and plain containers, and refuses every
    other global before anything is called."""

    def find_class(self, module: str, name: str) -> Callable:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in _NUMPY_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"it refers to {module}.{name}, which is neither a numpy array nor a plain container"
        )


def safe_numpy_pickle_load(path: str, *, what: str = "checkpoint") -> Any:
    """Read a pickle that may only hold numpy arrays in dicts, lists and tuples (Detectron2
    ``.pkl`` checkpoints: ``{"model": {name: ndarray}, ...}``).

    Unlike ``pickle.load``, this never imports or calls anything else: a file whose pickle refers
    to any other class or function (which could run code) is refused before any of it runs.

    Args:
        path: the ``.pkl`` file.
        what: what the file is, for the error message.

    Returns:
        The unpickled object.

    Raises:
        ValueError: the file is not such a pickle (also truncated or corrupt files); the message
            names the file.
    """
    try:
        with open(path, "rb") as f:
            loaded = _NumpyOnlyUnpickler(f, encoding=_BYTES_ENCODING).load()
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(
            f"Refusing {what} {path}: {exc}. Only numpy arrays in plain containers are read from "
            "pickle files; nothing in the file was run."
        ) from exc

    def check(obj: Any) -> None:
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
            raise ValueError(f"Refusing {what} {path}: it holds a numpy array of Python objects")
        children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        for child in children:
            check(child)

    check(loaded)
    return loaded


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """A checkpoint as ``{"model": state_dict, ...}``, never unpickling arbitrary objects.

    ``.pkl`` / ``.pickle`` files are refused, ``.safetensors`` read with safetensors, anything
    else with :func:`safe_torch_load`; a bare state dict is wrapped as ``{"model": ...}``.

    Args:
        path: the checkpoint file.

    Raises:
        ValueError: a pickle file, or a file that is unreadable or holds no dict; names ``path``.
    """
    if path.endswith(PICKLE_EXTENSIONS):
        raise ValueError(
            f"Refusing to load pickle checkpoint {path}: unpickling can execute arbitrary code. "
            "Convert it to .pth (tensors only) or .safetensors."
        )
    if path.endswith(SAFETENSORS_EXTENSION):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return {"model": load_file(path, device="cpu")}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"Could not read safetensors checkpoint {path}: {e}") from e
    loaded = safe_torch_load(path)
    if not isinstance(loaded, dict):
        raise ValueError(f"Checkpoint {path} does not hold a dict")
    return loaded if "model" in loaded else {"model": loaded}


def save_finite(obj: Any, path: str) -> None:
    """:func:`atomic_torch_save`, refusing an object whose tensors hold NaN or Inf.

    Args:
        obj: e.g. a checkpoint ``{"model": state_dict, "trainer": {...}}``.
        path: destination file.

    Raises:
        FloatingPointError: a floating-point tensor of ``obj`` holds NaN or Inf; names ``path``
            and the tensors, and writes nothing.
    """
    non_finite = non_finite_tensors(obj)
    if non_finite:
        listed = ", ".join(non_finite[:_MAX_NAMED_TENSORS])
        raise FloatingPointError(
            f"Refusing to write {path}: {len(non_finite)} tensors hold NaN or Inf ({listed}); "
            "the files written before are kept"
        )
    atomic_torch_save(obj, path)


def non_finite_tensors(state: Any, prefix: str = "") -> List[str]:
    """Dotted names of the floating-point tensors holding NaN or Inf in a nested dict / list.

    Args:
        state: e.g. a checkpoint: ``{"model": state_dict, "trainer": {"optimizer": ...}}``.
        prefix: name of ``state`` itself.

    Returns:
        The names, e.g. ``["model.head.weight", "trainer.optimizer.state.3.exp_avg"]``.
    """
    import torch

    if isinstance(state, torch.Tensor):
        finite = not state.is_floating_point() or bool(torch.isfinite(state).all())
        return [] if finite else [prefix]
    if isinstance(state, dict):
        items: Iterable = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    names: List[str] = []
    for key, value in items:
        names += non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return names


def _group_keys(keys: Iterable[str]) -> str:
    """State-dict keys as a complete, compact list: ``"head.{bias, weight}, query_feat"``."""
    groups: Dict[str, List[str]] = {}
    for key in sorted(keys):
        module, _, leaf = key.rpartition(".")
        groups.setdefault(module, []).append(leaf)
    entries = []
    for module, leaves in groups.items():
        leaf = leaves[0] if len(leaves) == 1 else "{" + ", ".join(leaves) + "}"
        entries.append(f"{module}.{leaf}" if module else leaf)
    return ", ".join(entries)


def describe_key_mismatch(
    *,
    missing: Sequence[str],
    unexpected: Sequence[str],
    wrong_shapes: Sequence[Tuple[str, Sequence[int], Sequence[int]]],
) -> str:
    """Every key of a state dict that did not load into a model, as one line.

    Args:
        missing: model keys the state dict lacks (wrong-shape keys among them are listed once).
        unexpected: state-dict keys the model lacks.
        wrong_shapes: (key, shape in the state dict, shape in the model).

    Returns:
        e.g. ``"wrong shape (file vs model): head.weight (8, 4) vs (3, 4); missing in the file:
        adapter.{bias, weight}; unexpected in the file: other.weight"``; empty when everything
        loaded.
    """
    shaped = {key for key, _, _ in wrong_shapes}
    parts = []
    if wrong_shapes:
        shapes = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in sorted(wrong_shapes))
        parts.append(f"wrong shape (file vs model): {shapes}")
    missing = [key for key in missing if key not in shaped]
    if missing:
        parts.append(f"missing in the file: {_group_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected in the file: {_group_keys(unexpected)}")
    return "; ".join(parts)

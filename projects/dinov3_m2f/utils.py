"""File helpers shared by the library and the command-line tools (no detectron2): files written
atomically (checkpoints never holding NaN or Inf, ``metrics.json`` trimmed for a resume), files
read safely (never unpickling code; Mask2Former ``.pkl`` files through a numpy-only unpickler),
and the description of checkpoint keys that did not load.

torch is imported inside the functions that use it, so that ``atomic_open`` and the ``data``
modules built on it also work where torch is not installed (the ONNX runner).
"""
import contextlib
import errno
import json
import logging
import os
import pickle
import tempfile
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_open",
    "atomic_torch_save",
    "describe_key_mismatch",
    "drop_metrics_from",
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


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Permissions of a new file as open(path, "w") would create it. The umask is read once, at import,
# because reading it means setting it for an instant, which other threads would see.
_NEW_FILE_MODE = 0o666 & ~_read_umask()


# Extensions that may only be read with pickle (arbitrary code execution); refused.
PICKLE_EXTENSIONS = (".pkl", ".pickle")
SAFETENSORS_EXTENSION = ".safetensors"
# How many tensors the error of save_finite names.
_MAX_NAMED_TENSORS = 10

# errno values meaning that the destination's file system has no room left for the write.
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _make_temp_file(folder: str, suffix: str) -> Tuple[int, str]:
    """A new, empty temporary file in ``folder``: (open descriptor, path)."""
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
    # mkstemp creates the file private (0600); give it the permissions a plain open() would.
    os.fchmod(fd, _NEW_FILE_MODE)
    return fd, tmp_path


def _no_space_error(path: str, error: OSError) -> OSError:
    return OSError(
        error.errno,
        f"{os.strerror(error.errno)}: cannot write {path}; the file as it was before, if any, is "
        "unchanged. Free some space (or write elsewhere) and run again",
    )


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", *, suffix: str = "") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    Readers never see a half-written ``path``: the temporary file (in the same folder, so the
    rename is atomic) replaces it only after the ``with`` block finishes without an exception, and
    is removed otherwise. The folder must exist. A write that fails for lack of space (ENOSPC, or
    EDQUOT for an exhausted quota) raises an ``OSError`` with that errno whose message names
    ``path`` and says there is no space left; the previous ``path`` stays as it was.

    Args:
        path: final file.
        mode: ``"wb"`` or ``"w"``.
        suffix: suffix of the temporary file name.

    Yields:
        The open temporary file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    fd, tmp_path = _make_temp_file(os.path.dirname(os.path.abspath(path)), suffix)
    try:
        try:
            with os.fdopen(fd, mode) as f:
                yield f
        except OSError as e:
            if e.errno in _NO_SPACE_ERRNOS:
                raise _no_space_error(path, e) from e
            raise
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_open`.

    Args:
        obj: object to save.
        path: destination file; its folder must exist.

    Raises:
        OSError: the write failed; for lack of space (ENOSPC / EDQUOT) the message names ``path``
            and says there is no space left (see :func:`atomic_open`), and ``path`` is unchanged.
    """
    import torch

    # torch.save gets the open file, not the path: its own file writer would report a full disk
    # only as "enforce fail at inline_container.cc ... file write failed". Python's file reports
    # ENOSPC (at the latest when it is closed), which atomic_open turns into a plain message.
    with atomic_open(path, "wb", suffix=".pth") as f:
        torch.save(obj, f)


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
        from safetensors.torch import load_file

        return {"model": load_file(path, device="cpu")}
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


def drop_metrics_from(path: str, iteration: int) -> int:
    """Remove the entries of iteration ``iteration`` and later from a JSON-lines metrics file
    (detectron2's ``metrics.json``), atomically; a line cut short by a crash goes too.

    A run restarting at ``iteration`` writes those entries again: detectron2's writer appends.

    Args:
        path: the file; nothing happens when it does not exist.
        iteration: the first iteration to drop.

    Returns:
        The number of lines removed.
    """
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a partial line written when the process was killed
        if isinstance(entry, dict) and entry.get("iteration", -1) < iteration:
            kept.append(line if line.endswith("\n") else line + "\n")
    removed = len(lines) - len(kept)
    if removed:
        with atomic_open(path, "w", suffix=".json") as f:
            f.writelines(kept)
        logger.info("Removed %d entries of iteration %d and later from %s", removed, iteration, path)
    return removed

"""Files written atomically (no detectron2, no torch at import).

A file is written to a temporary name in its folder and renamed over the destination only when
the write succeeded, so readers never see half a file; a full disk gives an error naming the file.
torch is imported inside :func:`atomic_torch_save`, so that :func:`atomic_open` and the ``data``
modules built on it also work where torch is not installed (the ONNX runner).
"""
import contextlib
import errno
import os
import tempfile
from typing import IO, Any, Iterator, Tuple

__all__ = ["atomic_open", "atomic_output_path", "atomic_torch_save"]


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Permissions of a new file as open(path, "w") would create it. The umask is read once, at import,
# because reading it means setting it for an instant, which other threads would see.
_NEW_FILE_MODE = 0o666 & ~_read_umask()

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
def _replace_on_success(path: str, tmp_path: str) -> Iterator[None]:
    """Rename ``tmp_path`` over ``path`` if the block succeeds; remove it in any case."""
    try:
        try:
            yield
        except OSError as e:
            if e.errno in _NO_SPACE_ERRNOS:
                raise _no_space_error(path, e) from e
            raise
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


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
    with _replace_on_success(path, tmp_path), os.fdopen(fd, mode) as f:
        yield f


@contextlib.contextmanager
def atomic_output_path(path: str, *, suffix: str = "") -> Iterator[str]:
    """A temporary file name next to ``path``, renamed over ``path`` on success.

    For writers that take a file name rather than an open file (rasterio/GDAL); otherwise as
    :func:`atomic_open` (same folder, removed on failure, a full disk named).

    Args:
        path: final file.
        suffix: suffix of the temporary file name (some writers choose the format by it).

    Yields:
        The temporary file's path (an empty file exists there).
    """
    fd, tmp_path = _make_temp_file(os.path.dirname(os.path.abspath(path)), suffix)
    os.close(fd)
    with _replace_on_success(path, tmp_path):
        yield tmp_path


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

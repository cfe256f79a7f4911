"""One training run per output directory: a lock file naming the run that holds the folder (no
detectron2).

Two runs writing into one folder would interleave ``metrics.json`` and overwrite each other's
``config.yaml`` and checkpoints. :func:`acquire_output_lock` creates ``<output_dir>/run.lock``
(host, pid, start time, command) in one atomic step and refuses when another live run holds it;
a lock left by a dead process on the same host (a run killed with SIGKILL, a crashed machine) is
taken over with a warning. A lock held from another host cannot be checked and is always refused
unless ``force``. :meth:`RunLock.release` removes the file only while it is still this run's.
"""
import datetime
import json
import logging
import os
import socket
import sys
from typing import Any, Dict, Optional

from .atomic_files import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "OutputDirLockedError", "RunLock", "acquire_output_lock"]

LOCK_FILE = "run.lock"
# How a lock is overridden, quoted in the refusal.
OVERRIDE_HINT = "pass --force-output-dir to start anyway"


class OutputDirLockedError(RuntimeError):
    """Another run holds the output directory."""


def _this_run() -> Dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def _describe(holder: Optional[Dict[str, Any]]) -> str:
    if holder is None:
        return "an unreadable lock"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')} ({holder.get('command')})")


def _read(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _create_exclusive(path: str, content: Dict[str, Any]) -> bool:
    """Create ``path`` holding ``content`` in one step (a hard link to a complete temporary
    file); False when ``path`` exists."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(content, f)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


class RunLock:
    """The lock of one run on its output directory (see :func:`acquire_output_lock`)."""

    def __init__(self, path: str, content: Dict[str, Any]):
        self.path = path
        self.content = content

    def release(self) -> None:
        """Remove the lock file, unless another run has taken it over since."""
        if _read(self.path) == self.content:
            os.unlink(self.path)


def acquire_output_lock(output_dir: str, *, force: bool = False) -> RunLock:
    """Lock ``output_dir`` (created if needed) for this process.

    Args:
        output_dir: the run's output directory.
        force: take the lock whoever holds it (a warning names the holder).

    Returns:
        The lock; call :meth:`RunLock.release` when the run ends.

    Raises:
        OutputDirLockedError: another live run on this host, a run on another host, or an
            unreadable lock holds the folder; names the lock file, the holder and the override.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    content = _this_run()
    if _create_exclusive(path, content):
        return RunLock(path, content)
    holder = _read(path)
    stale = (holder is not None and holder.get("host") == content["host"]
             and not _pid_alive(holder.get("pid")))
    if not (stale or force):
        raise OutputDirLockedError(
            f"{output_dir} is in use by another run: {path} names {_describe(holder)}. Two runs "
            f"in one folder mix their metrics and overwrite each other's checkpoints; use another "
            f"train.output_dir, or, if that run is over, {OVERRIDE_HINT}"
        )
    reason = "its process is no longer running" if stale else "--force-output-dir"
    logger.warning("Taking over the lock %s of %s (%s)", path, _describe(holder), reason)
    with atomic_open(path, "w") as f:
        json.dump(content, f)
    return RunLock(path, content)

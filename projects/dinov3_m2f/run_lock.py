"""One training run per output directory: a lock file naming the run that holds the folder (no
detectron2).

Two runs writing into one folder would interleave ``metrics.json`` and overwrite each other's
``config.yaml`` and checkpoints. :func:`acquire_output_lock` creates ``<output_dir>/run.lock``
(host, pid, start time, command, SLURM job id) in one atomic step and refuses when another live
run holds it. While the run lives, a background thread refreshes the file's modification time
every ``HEARTBEAT_S`` seconds. A lock is stale, and taken over with a warning, when its process
is gone (same host), when it is this SLURM job's own earlier run (a requeued job, maybe on
another node), or when it was not refreshed for ``STALE_AFTER_S`` seconds (another host, where
the pid cannot be checked). :meth:`RunLock.release` removes the file only while it is still
this run's.
"""
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Dict, Optional

from .atomic_files import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "OutputDirLockedError", "RunLock", "acquire_output_lock"]

LOCK_FILE = "run.lock"
# A live run refreshes its lock this often; a lock from another host not refreshed for
# STALE_AFTER_S is taken over (long enough for a slow shared file system to lag behind).
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
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
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
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
    file; where the file system has no hard links, an exclusive create, then the write);
    False when ``path`` exists."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(content, f)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            with open(path, "x") as f:
                json.dump(content, f)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    return True


def _stale_reason(path: str, holder: Optional[Dict[str, Any]], run: Dict[str, Any]) -> Optional[str]:
    """Why the lock ``holder`` (read from ``path``) no longer holds the folder, or None."""
    if holder is None:
        return None
    if holder.get("host") == run["host"]:
        return None if _pid_alive(holder.get("pid")) else "its process is no longer running"
    if run["slurm_job_id"] is not None and holder.get("slurm_job_id") == run["slurm_job_id"]:
        return f"it is an earlier run of this SLURM job ({run['slurm_job_id']}), requeued"
    age = time.time() - os.path.getmtime(path)
    if age > STALE_AFTER_S:
        return f"it was last refreshed {age:.0f} s ago (a live run refreshes it every {HEARTBEAT_S:.0f} s)"
    return None


class RunLock:
    """The lock of one run on its output directory (see :func:`acquire_output_lock`); refreshed
    every ``heartbeat_s`` seconds by a daemon thread until :meth:`release`."""

    def __init__(self, path: str, content: Dict[str, Any], *, heartbeat_s: float = HEARTBEAT_S):
        self.path = path
        self.content = content
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._refresh, args=(heartbeat_s,), daemon=True,
                                           name="run-lock-heartbeat")
        self._heartbeat.start()

    def _refresh(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                os.utime(self.path)
            except OSError:  # removed or unreachable: the next start decides what it means
                pass

    def release(self) -> None:
        """Stop refreshing and remove the lock file, unless another run has taken it over."""
        self._stop.set()
        self._heartbeat.join()
        if _read(self.path) == self.content:
            os.unlink(self.path)


def acquire_output_lock(
    output_dir: str, *, force: bool = False, heartbeat_s: float = HEARTBEAT_S
) -> RunLock:
    """Lock ``output_dir`` (created if needed) for this process.

    Args:
        output_dir: the run's output directory.
        force: take the lock whoever holds it (a warning names the holder).
        heartbeat_s: how often the lock is refreshed while the run lives.

    Returns:
        The lock; call :meth:`RunLock.release` when the run ends.

    Raises:
        OutputDirLockedError: a lock that is not stale (see the module docstring) or an
            unreadable one holds the folder; names the lock file, the holder and the override.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    content = _this_run()
    if _create_exclusive(path, content):
        return RunLock(path, content, heartbeat_s=heartbeat_s)
    holder = _read(path)
    stale = _stale_reason(path, holder, content)
    if not (stale or force):
        raise OutputDirLockedError(
            f"{output_dir} is in use by another run: {path} names {_describe(holder)}. Two runs "
            f"in one folder mix their metrics and overwrite each other's checkpoints; use another "
            f"train.output_dir, or, if that run is over, {OVERRIDE_HINT}"
        )
    logger.warning("Taking over the lock %s of %s (%s)", path, _describe(holder),
                   stale or "--force-output-dir")
    with atomic_open(path, "w") as f:
        json.dump(content, f)
    return RunLock(path, content, heartbeat_s=heartbeat_s)

"""One output directory, one run: ``run.lock`` (host, pid, start time); a second run is refused
naming the first, on every process; a stale lock (dead process on this host, earlier run of this
SLURM job, not refreshed for long) is taken over with a warning; ``--force-output-dir``
overrides; the lock goes at the end of the run."""
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("detectron2")

from test_train_net import SUBPROCESS_TIMEOUT_S, _command  # noqa: E402

from dinov3_m2f.run_lock import (  # noqa: E402
    LOCK_FILE, STALE_AFTER_S, OutputDirLockedError, acquire_output_lock,
)

# Bound of the wait for the heartbeat thread (it refreshes every HEARTBEAT_TEST_S).
HEARTBEAT_TEST_S = 0.01
HEARTBEAT_WAIT_S = 30


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder, **fields):
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00",
              "command": "train_net.py (the first run)", **fields}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "w") as f:
        json.dump(holder, f)


def _holder(folder):
    with open(os.path.join(folder, LOCK_FILE)) as f:
        return json.load(f)


def test_the_lock_names_the_run_and_a_second_run_is_refused_naming_it(tmp_path):
    lock = acquire_output_lock(str(tmp_path / "run"))
    holder = _holder(tmp_path / "run")
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    assert holder["started"]
    with pytest.raises(OutputDirLockedError,
                       match=rf"in use by another run: .*pid {os.getpid()} on host "
                             rf"{socket.gethostname()}, started {re.escape(holder['started'])}.*"
                             "--force-output-dir"):
        acquire_output_lock(str(tmp_path / "run"))
    lock.release()
    assert not os.path.exists(tmp_path / "run" / LOCK_FILE)
    acquire_output_lock(str(tmp_path / "run")).release()


def test_a_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid)
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        lock = acquire_output_lock(str(tmp_path))
    assert _holder(tmp_path)["pid"] == os.getpid()
    assert f"Taking over the lock {tmp_path / LOCK_FILE} of pid {pid}" in caplog.text
    assert "its process is no longer running" in caplog.text
    lock.release()


def test_another_host_is_refused_unless_forced_and_release_keeps_a_newer_lock(tmp_path, caplog):
    _write_lock(tmp_path, host="other-node", pid=_dead_pid())
    with pytest.raises(OutputDirLockedError, match="on host other-node"):
        acquire_output_lock(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        forced = acquire_output_lock(str(tmp_path), force=True)
    assert "(--force-output-dir)" in caplog.text
    _write_lock(tmp_path, pid=os.getpid() + 1)  # another run forced its way in since
    forced.release()
    assert os.path.exists(tmp_path / LOCK_FILE)


def test_a_file_system_without_hard_links_gets_the_lock_too(tmp_path, monkeypatch):
    def no_link(source, destination):
        raise PermissionError(f"hard links are not supported: {destination}")

    monkeypatch.setattr(os, "link", no_link)
    lock = acquire_output_lock(str(tmp_path))
    assert _holder(tmp_path)["pid"] == os.getpid()
    with pytest.raises(OutputDirLockedError):
        acquire_output_lock(str(tmp_path))
    lock.release()
    assert os.listdir(tmp_path) == []


def test_a_lock_from_another_host_is_taken_over_once_it_is_no_longer_refreshed(tmp_path, caplog):
    _write_lock(tmp_path, host="other-node")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        acquire_output_lock(str(tmp_path)).release()
    assert "on host other-node" in caplog.text and "it was last refreshed" in caplog.text


def test_an_earlier_run_of_this_slurm_job_is_taken_over(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _write_lock(tmp_path, host="other-node", slurm_job_id="4242")
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        acquire_output_lock(str(tmp_path)).release()
    assert "an earlier run of this SLURM job (4242), requeued" in caplog.text
    _write_lock(tmp_path, host="other-node", slurm_job_id="17")
    with pytest.raises(OutputDirLockedError):
        acquire_output_lock(str(tmp_path))


def test_a_live_run_refreshes_its_lock(tmp_path):
    lock = acquire_output_lock(str(tmp_path), heartbeat_s=HEARTBEAT_TEST_S)
    os.utime(tmp_path / LOCK_FILE, (0, 0))
    deadline = time.time() + HEARTBEAT_WAIT_S
    while os.path.getmtime(tmp_path / LOCK_FILE) == 0:
        assert time.time() < deadline, "the lock was not refreshed"
        time.sleep(HEARTBEAT_TEST_S)
    lock.release()
    assert not os.path.exists(tmp_path / LOCK_FILE)


@pytest.mark.parametrize("processes", [1, 2])
def test_train_net_refuses_a_locked_folder_on_every_process(synthetic_env, tmp_path, processes):
    out = str(tmp_path / "run")
    _write_lock(out)  # held by this (live) test process
    extra = ["--num-gpus", "2", "--dist-url", "auto"] if processes == 2 else []
    proc = subprocess.run(_command(out, *extra, "train.max_iter=1"), env=synthetic_env,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode != 0
    assert f"OutputDirLockedError: {out} is in use by another run" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr
    assert not os.path.exists(os.path.join(out, "config.yaml"))
    assert _holder(out)["pid"] == os.getpid()

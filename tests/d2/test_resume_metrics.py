"""``metrics.json`` after ``--resume``: every logged iteration exactly once, in order, and the
evaluations that followed, also when iterations were logged after the checkpoint resumed from;
the lock of the killed run is taken over; a learning rate changed on resume applies."""
import json
import os
import subprocess

import pytest

pytest.importorskip("detectron2")

from detectron2.utils.events import EventStorage, JSONWriter  # noqa: E402
from test_exact_resume import SUBPROCESS_TIMEOUT_S, _command, _metrics  # noqa: E402

from dinov3_m2f.metrics_log import drop_metrics_from  # noqa: E402
from dinov3_m2f.run_lock import LOCK_FILE  # noqa: E402
from helpers import kill_when_file_appears  # noqa: E402

# 8 iterations; checkpoints after iterations 2 and 5; an evaluation (and model_best.pth) after
# iteration 4, once iteration 3 is logged; the final evaluation is logged as iteration 8.
MAX_ITER = 8
# The tiny config's learning rate, and the one the resumed run is given.
CONFIG_LR, RESUMED_LR = 0.001, 0.0005
# (appended after the shared overrides, which they replace)
INTERRUPTED = ["train.checkpointer.period=3", "train.eval_period=5"]


def test_a_writer_opened_before_the_trim_keeps_writing_into_the_file(tmp_path):
    path = str(tmp_path / "metrics.json")
    with open(path, "w") as f:
        f.writelines(json.dumps({"iteration": i, "loss": 1.0}) + "\n" for i in range(5))
    with EventStorage(3) as storage:
        writer = JSONWriter(path)  # opens the file, as the resumed run does before the trim
        assert drop_metrics_from(path, 3) == 2
        for iteration in (3, 4):
            storage.iter = iteration
            storage.put_scalar("loss", 2.0, smoothing_hint=False)
            writer.write()
        writer.close()
    with open(path) as f:
        entries = [json.loads(line) for line in f]
    assert [e["iteration"] for e in entries] == [0, 1, 2, 3, 4]
    assert [e["loss"] for e in entries] == [1.0, 1.0, 1.0, 2.0, 2.0]


def test_trimming_keeps_the_file_and_rewrites_entries_out_of_order(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [json.dumps({"iteration": i}) for i in (0, 5, 1)]  # iteration 5 before 1
    path.write_text("\n".join(lines) + "\n")
    inode = os.stat(path).st_ino
    assert drop_metrics_from(str(path), 2) == 1
    assert os.stat(path).st_ino == inode
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [0, 1]


def test_resume_after_iterations_logged_past_the_checkpoint_logs_each_iteration_once(
    synthetic_env, tmp_path
):
    out = str(tmp_path / "cut")
    os.makedirs(out)
    kill_when_file_appears([*_command(out), *INTERRUPTED], env=synthetic_env,
                           path=os.path.join(out, "model_best.pth"),
                           timeout_s=SUBPROCESS_TIMEOUT_S)
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000002.pth"
    # the interrupted run logged past its checkpoint: the resumed run writes those entries again
    interrupted = {e["iteration"]: e for e in _metrics(out)}
    assert max(interrupted) >= 3

    # resumed with half the learning rate: the config's value applies, the schedule goes on
    proc = subprocess.run([*_command(out, "--resume"), *INTERRUPTED, f"optimizer.lr={RESUMED_LR}"],
                          env=synthetic_env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"lr {CONFIG_LR} -> {RESUMED_LR} (group 0)" in proc.stdout + proc.stderr
    # the killed run left its lock; the resumed run took it over and removed it at the end
    assert "Taking over the lock" in proc.stdout + proc.stderr
    assert "its process is no longer running" in proc.stdout + proc.stderr
    assert not os.path.exists(os.path.join(out, LOCK_FILE))
    entries = _metrics(out)
    # iterations 0..7 once each, then the final evaluation (stored as iteration max_iter)
    assert [e["iteration"] for e in entries] == list(range(MAX_ITER + 1))
    assert "sem_seg/mIoU" in entries[-1]
    assert all("total_loss" in e for e in entries[:MAX_ITER])
    assert entries[2]["lr"] == interrupted[2]["lr"]
    assert entries[3]["lr"] == pytest.approx(interrupted[3]["lr"] * RESUMED_LR / CONFIG_LR)

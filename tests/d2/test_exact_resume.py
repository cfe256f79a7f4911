"""Resume is exact: kill -9 of a CPU training run, then ``--resume``, ends with
the weights of an uninterrupted run; ``last_checkpoint`` never names the best checkpoint;
``metrics.json`` continues without a gap or a repeat; ``--resume`` without a checkpoint says so."""
import argparse
import json
import logging
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from test_training_modes import _batches, _Net  # noqa: E402

from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.d2.hooks import BestCheckpointer, SegEvalHook, SegPeriodicCheckpointer  # noqa: E402
from dinov3_m2f.d2.solver import get_param_groups  # noqa: E402
from dinov3_m2f.d2.trainer import SegTrainer  # noqa: E402
from dinov3_m2f.metrics_log import drop_metrics_from  # noqa: E402
from helpers import kill_when_file_appears, load_tool  # noqa: E402

from helpers import REPO  # noqa: E402
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
SUBPROCESS_TIMEOUT_S = 600
# The run that is killed and resumed: 8 iterations, a checkpoint every 2, an evaluation (and a
# best checkpoint) every 3, random augmentations and point sampling as configured.
RUN_OVERRIDES = [
    "train.max_iter=8", "train.checkpointer.period=2", "train.eval_period=3",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0", "model.criterion.num_points=256", "train.log_period=1",
]
WEIGHTS_ATOL = 1e-6


def _command(output_dir, *extra):
    return [sys.executable, TRAIN_NET, "--config-file", CONFIG, *extra,
            f"train.output_dir={output_dir}", *RUN_OVERRIDES]


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _kill_after_first_checkpoint(env, out):
    """Start a run, SIGKILL it once ``last_checkpoint`` exists; the file it names."""
    os.makedirs(out)
    last = os.path.join(out, "last_checkpoint")
    kill_when_file_appears(_command(out), env=env, path=last, timeout_s=SUBPROCESS_TIMEOUT_S)
    with open(last) as f:
        return f.read().strip()


def test_kill_9_then_resume_ends_with_the_weights_of_an_uninterrupted_run(synthetic_env, tmp_path):
    whole = str(tmp_path / "whole")
    proc = subprocess.run(_command(whole), env=synthetic_env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]

    cut = str(tmp_path / "cut")
    tagged = _kill_after_first_checkpoint(synthetic_env, cut)
    assert re.fullmatch(r"model_\d{7}\.pth", tagged), tagged
    assert not os.path.exists(os.path.join(cut, "model_final.pth")), "the run was not cut short"
    proc = subprocess.run(_command(cut, "--resume"), env=synthetic_env, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved_iter = int(tagged[len("model_"):-len(".pth")])
    assert f"Starting training from iteration {saved_iter + 1}" in proc.stdout + proc.stderr

    expected = torch.load(os.path.join(whole, "model_final.pth"), weights_only=True)
    resumed = torch.load(os.path.join(cut, "model_final.pth"), weights_only=True)
    assert expected["model"].keys() == resumed["model"].keys()
    for key, value in expected["model"].items():
        if value.is_floating_point():
            diff = (value - resumed["model"][key]).abs().max().item()
            assert diff <= WEIGHTS_ATOL, f"{key}: max-abs difference {diff}"
        else:
            assert torch.equal(value, resumed["model"][key]), key
    # every iteration logged once (no gap, no repeat), with the learning rate of the
    # uninterrupted run (the losses are medians over a window that starts again on resume)
    whole_metrics, cut_metrics = _metrics(whole), _metrics(cut)
    assert [e["iteration"] for e in cut_metrics] == [e["iteration"] for e in whole_metrics]
    assert [e.get("lr") for e in cut_metrics] == [e.get("lr") for e in whole_metrics]
    for out in (whole, cut):
        with open(os.path.join(out, "last_checkpoint")) as f:
            assert f.read().strip() == "model_final.pth"
    assert os.path.exists(os.path.join(whole, "model_best.pth"))


class _RecordLastCheckpoint(HookBase):
    """Records the file named in ``last_checkpoint`` after every iteration's other hooks."""

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.named = []

    def after_step(self):
        path = self.checkpointer.get_checkpoint_file()
        self.named.append(os.path.basename(path) if path else None)


def test_last_checkpoint_never_names_the_best_checkpoint(tmp_path):
    model = _Net()
    trainer = SegTrainer(model, iter(_batches(5, 4)),
                         torch.optim.SGD(get_param_groups(model, base_lr=0.1, weight_decay=0.0)),
                         device=torch.device("cpu"))
    checkpointer = TrainableCheckpointer(model, str(tmp_path), trainer=trainer)
    evaluations = iter([1.0, 2.0, 3.0, 4.0, 5.0])  # a new best at every evaluation
    record = _RecordLastCheckpoint(checkpointer)
    trainer.register_hooks([
        SegEvalHook(1, lambda: {"sem_seg": {"mIoU": next(evaluations)}}),
        BestCheckpointer(1, checkpointer, "sem_seg/mIoU"),
        SegPeriodicCheckpointer(checkpointer, period=2),
        record,
    ])
    trainer.train(0, 4)
    assert os.path.exists(tmp_path / "model_best.pth")
    assert record.named[:3] == [None, "model_0000001.pth", "model_0000001.pth"]
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read() == "model_final.pth"


def test_resume_into_a_directory_without_checkpoint_says_so(tmp_path, caplog, monkeypatch):
    # a run set up earlier in this process (detectron2's setup_logger) stops propagation to caplog
    monkeypatch.setattr(logging.getLogger("detectron2"), "propagate", True)
    train_net = load_tool("train_net")
    model = _Net()
    cfg = OmegaConf.create({"train": {"output_dir": str(tmp_path), "init_checkpoint": "",
                                      "init_partial": False}})
    checkpointer = TrainableCheckpointer(model, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="detectron2"):
        start = train_net.load_start_state(argparse.Namespace(resume=True), cfg, checkpointer)
    assert start == 0
    assert f"--resume: no checkpoint in {tmp_path} (no last_checkpoint file)" in caplog.text


def test_metrics_of_the_iterations_run_again_are_dropped(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [json.dumps({"iteration": i, "total_loss": float(i)}) for i in range(6)]
    path.write_text("\n".join(lines) + '\n{"iteration": 6, "total_lo')  # cut short by a kill
    assert drop_metrics_from(str(path), 4) == 3
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]
    assert drop_metrics_from(str(tmp_path / "absent.json"), 0) == 0

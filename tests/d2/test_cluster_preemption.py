"""Preemption: a signal lets the run finish its iteration, write a checkpoint the way periodic ones
are written and exit with the requeue code; ``--resume`` then ends with the weights of an
uninterrupted run. A second signal exits at once."""
import logging
import os
import signal

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.config import LazyConfig  # noqa: E402
from cluster_runs import (  # noqa: E402
    MAX_ITER,
    PREEMPTED_EXIT_CODE,
    Runs,
    assert_same_final_weights,
    preempted_checkpoint,
    signal_after_iteration,
    train_command,
)
from helpers import REPO  # noqa: E402
from test_training_modes import _batches, _Net  # noqa: E402

from dinov3_m2f.config_schema import ConfigValueError, check_train  # noqa: E402
from dinov3_m2f.d2 import preemption  # noqa: E402
from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.d2.hooks import SegPeriodicCheckpointer  # noqa: E402
from dinov3_m2f.d2.solver import get_param_groups  # noqa: E402
from dinov3_m2f.d2.trainer import SegTrainer  # noqa: E402


def _toy_run(tmp_path, request, *, max_iter=6, period=4):
    """A toy trainer with the preemption hook and the periodic checkpointer, as train_net
    registers them; returns the trainer."""
    os.makedirs(tmp_path, exist_ok=True)
    model = _Net()
    trainer = SegTrainer(model, iter(_batches(max_iter, 4)),
                         torch.optim.SGD(get_param_groups(model, base_lr=0.1, weight_decay=0.0)),
                         device=torch.device("cpu"))
    checkpointer = TrainableCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks([
        preemption.PreemptionHook(request, checkpointer=checkpointer),
        SegPeriodicCheckpointer(checkpointer, period=period, max_iter=max_iter),
    ])
    return trainer


class _SignalAt(preemption.PreemptionRequest):
    """A request whose signal arrives during ``iteration`` of ``trainer``."""

    def __init__(self, iteration, signum=signal.SIGUSR1):
        super().__init__([signum])
        self.iteration, self.signum, self.trainer = iteration, signum, None

    def signal_number(self):
        return self.signum if self.trainer.iter >= self.iteration else 0


def test_the_hook_checkpoints_the_iteration_and_exits_with_the_requeue_code(tmp_path, caplog):
    request = _SignalAt(2)
    trainer = request.trainer = _toy_run(tmp_path, request)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_info:
        trainer.train(0, 6)
    assert exit_info.value.code == PREEMPTED_EXIT_CODE == preemption.PREEMPTED_EXIT_CODE
    assert trainer.iter == 2
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert saved["iteration"] == 2 and saved["trainer"]["iteration"] == 2
    assert not (tmp_path / "model_final.pth").exists()
    assert (f"Preempted by SIGUSR1: stopped after iteration 2 of 6, checkpoint "
            f"{tmp_path / 'model_0000002.pth'}") in caplog.text


def test_a_signal_during_the_last_iteration_lets_the_run_finish(tmp_path, caplog):
    request = _SignalAt(5)
    trainer = request.trainer = _toy_run(tmp_path, request)
    with caplog.at_level(logging.INFO):
        trainer.train(0, 6)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert "SIGUSR1 received during iteration 5, the last one: finishing the run" in caplog.text


def test_a_second_signal_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(preemption.os, "_exit", exits.append)
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        request = preemption.install_preemption_handlers(["SIGUSR1"])
        assert preemption.active_request() is request
        os.kill(os.getpid(), signal.SIGUSR1)
        assert request.signal_number() == signal.SIGUSR1 and exits == []
        os.kill(os.getpid(), signal.SIGUSR1)
        assert exits == [128 + signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
        preemption._ACTIVE = None


def test_signal_names_are_checked_when_the_config_loads():
    train = LazyConfig.load(os.path.join(REPO, "configs", "common", "train.py")).train
    check_train(train)
    assert list(train.preemption_signals) == ["SIGTERM", "SIGUSR1", "SIGINT"]
    for bad in ("SIGKILL", "SIGTERMS"):
        train.preemption_signals = [bad]
        with pytest.raises(ConfigValueError, match=f"train.preemption_signals: '{bad}'"):
            check_train(train)


def test_sigterm_mid_run_then_resume_gives_the_weights_of_an_uninterrupted_run(synthetic_env, tmp_path):
    runs = Runs(synthetic_env, tmp_path / "logs")
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    try:
        runs.run(train_command(whole), "whole")
        proc = runs.start(train_command(cut), "cut")
        signal_after_iteration(runs, proc, cut, 1, signal.SIGTERM)
        assert runs.wait(proc) == [PREEMPTED_EXIT_CODE], runs.log(proc)[-3000:]
        name, iteration = preempted_checkpoint(cut)
        assert iteration < MAX_ITER - 1
        assert (f"Preempted by SIGTERM: stopped after iteration {iteration} of {MAX_ITER}, "
                f"checkpoint {os.path.join(cut, name)} (last_checkpoint updated); exiting with "
                f"code {PREEMPTED_EXIT_CODE}") in runs.log(proc)
        assert not os.path.exists(os.path.join(cut, "model_final.pth"))
        resumed = runs.run(train_command(cut, "--resume"), "resumed")
        assert f"Starting training from iteration {iteration + 1}" in runs.log(resumed)
    finally:
        runs.kill_all()
    assert_same_final_weights(whole, cut)

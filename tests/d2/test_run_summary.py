"""A training run ends with a summary (final metrics; where the checkpoint, ``metrics.json`` and
the TensorBoard events are); ``--eval-only`` into the training folder leaves its ``config.yaml``
as training wrote it and saves ``config_eval.yaml``, and writes strict JSON results."""
import json
import logging
import os

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.engine import hooks  # noqa: E402
from test_train_net import _run  # noqa: E402
from test_training_modes import _batches, _Net  # noqa: E402

from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.d2.run_summary import RunSummary  # noqa: E402
from dinov3_m2f.d2.solver import get_param_groups  # noqa: E402
from dinov3_m2f.d2.trainer import SegTrainer  # noqa: E402

MAX_ITER = 4


def _reject_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def test_training_summary_then_eval_only_keeps_the_training_config(synthetic_env, tmp_path):
    out = str(tmp_path / "run")
    log = _run(synthetic_env, out, "train.max_iter=2", "train.eval_period=0",
               "train.checkpointer.period=100")
    summary = log[log.index("Training finished: 2 of 2 iterations"):]
    assert "sem_seg/mIoU = " in summary and "(iteration 2)" in summary
    assert f"checkpoint (--resume continues from it): {out}/model_final.pth" in summary
    assert f"best checkpoint: {out}/model_best.pth (sem_seg/mIoU = " in summary
    assert f"metrics, one JSON line per logged iteration: {out}/metrics.json" in summary
    assert f"TensorBoard events in {out}: tensorboard --logdir {out}" in summary

    with open(os.path.join(out, "config.yaml")) as f:
        training_config = f.read()
    _run(synthetic_env, out, "--eval-only", f"train.init_checkpoint={out}/model_final.pth")
    with open(os.path.join(out, "config.yaml")) as f:
        assert f.read() == training_config
    with open(os.path.join(out, "config_eval.yaml")) as f:
        assert f"init_checkpoint: {out}/model_final.pth" in f.read()
    with open(os.path.join(out, "eval_results.json")) as f:
        results = json.loads(f.read(), parse_constant=_reject_constant)
    assert set(results["sem_seg"]) >= {"mIoU", "fwIoU", "mACC", "pACC"}


def _train_with_summary(folder, data, caplog, *extra_hooks):
    folder.mkdir()
    model = _Net()
    trainer = SegTrainer(model, data, torch.optim.SGD(
        get_param_groups(model, base_lr=0.1, weight_decay=0.0)), device=torch.device("cpu"))
    checkpointer = TrainableCheckpointer(model, str(folder), trainer=trainer)
    trainer.register_hooks([*extra_hooks, hooks.PeriodicCheckpointer(checkpointer, period=1),
                            RunSummary(str(folder), checkpointer)])
    with caplog.at_level(logging.INFO, logger="dinov3_m2f"):
        trainer.train(0, MAX_ITER)
    return trainer


def test_the_summary_also_ends_a_failed_or_stopped_run(tmp_path, caplog):
    def two_batches_then_fail():
        yield from _batches(2, 4)
        raise OSError("the data went away")

    with pytest.raises(OSError, match="the data went away"):
        _train_with_summary(tmp_path / "failed", two_batches_then_fail(), caplog)
    assert f"Training ended with an error in iteration 2 of {MAX_ITER}" in caplog.text
    newest = tmp_path / "failed" / "model_0000001.pth"
    assert f"checkpoint (--resume continues from it): {newest}" in caplog.text

    stop = hooks.CallbackHook(after_step=lambda t: t.request_stop("asked by the test"))
    _train_with_summary(tmp_path / "stopped", iter(_batches(MAX_ITER, 4)), caplog, stop)
    assert "Training stopped after 1 iterations: asked by the test" in caplog.text
    assert f"{tmp_path / 'stopped' / 'model_0000000.pth'}" in caplog.text

"""A training run ends with a summary (final metrics; where the checkpoint, ``metrics.json`` and
the TensorBoard events are); ``--eval-only`` into the training folder leaves its ``config.yaml``
as training wrote it and saves ``config_eval.yaml``, and writes strict JSON results."""
import json
import os

import pytest

pytest.importorskip("detectron2")

from test_train_net import _run  # noqa: E402


def _reject_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def test_training_summary_then_eval_only_keeps_the_training_config(synthetic_env, tmp_path):
    out = str(tmp_path / "run")
    log = _run(synthetic_env, out, "train.max_iter=2", "train.eval_period=0",
               "train.checkpointer.period=100")
    summary = log[log.index("Training finished after iteration 1 of 2"):]
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

"""A resume that changes settings: the config's optimizer values apply (the schedule continues at
its position) and are logged; another dataset size, batch size or accumulation is a warning
naming both values."""
import logging

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.engine import hooks  # noqa: E402
from fvcore.common.param_scheduler import LinearParamScheduler  # noqa: E402
from test_training_modes import _batches, _Net  # noqa: E402

from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.d2.resume_settings import ResumeSettings  # noqa: E402
from dinov3_m2f.d2.solver import get_param_groups  # noqa: E402
from dinov3_m2f.d2.trainer import SegTrainer  # noqa: E402

MAX_ITER = 4
SAVED_AT = 2  # the first run stops after iterations 0 and 1
DATA = {"dataset_size": 10, "total_batch_size": 2, "grad_accum_steps": 1}


def _run(folder, *, lr, weight_decay, betas=(0.9, 0.99), data=DATA, resume=False):
    """Train _Net with AdamW under a linear LR ramp down to 0 at MAX_ITER; the first run stops
    after SAVED_AT iterations (a checkpoint), the resumed one continues to MAX_ITER. Returns the
    optimizer's (lr, weight decay, betas) of each group in the first iteration run."""
    folder.mkdir(exist_ok=True)
    model = _Net()
    optimizer = torch.optim.AdamW(
        get_param_groups(model, base_lr=lr, weight_decay=weight_decay), betas=betas
    )
    trainer = SegTrainer(model, iter(_batches(MAX_ITER, 4)), optimizer, device=torch.device("cpu"))
    checkpointer = TrainableCheckpointer(model, str(folder), trainer=trainer)
    seen = []
    record = hooks.CallbackHook(before_step=lambda t: seen.append(
        [(g["lr"], g["weight_decay"], g["betas"]) for g in t.optimizer.param_groups]))
    trainer.register_hooks([
        ResumeSettings(optimizer, data_settings=data),
        hooks.LRScheduler(scheduler=LinearParamScheduler(1.0, 0.0)),
        record,
        hooks.PeriodicCheckpointer(checkpointer, period=SAVED_AT),
    ])
    if resume:
        checkpointer.resume_or_load("", resume=True)
        trainer.train(trainer.iter + 1, MAX_ITER)
    else:
        trainer.train(0, SAVED_AT)
    return seen[0]


def test_the_configs_optimizer_values_apply_after_a_resume(tmp_path, caplog):
    _run(tmp_path, lr=0.1, weight_decay=0.05)
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        groups = _run(tmp_path, lr=0.01, weight_decay=0.2, betas=(0.8, 0.9), resume=True)
    multiplier = 1 - SAVED_AT / MAX_ITER  # the linear ramp at the resumed iteration
    decayed = [(lr, wd) for lr, wd, _ in groups if wd > 0]
    assert decayed and all(lr == pytest.approx(0.01 * multiplier) and wd == 0.2 for lr, wd in decayed)
    assert all(betas == (0.8, 0.9) for _, _, betas in groups)
    assert "The config's optimizer values apply, not the checkpoint's" in caplog.text
    assert "lr 0.1 -> 0.01 (group 0)" in caplog.text
    assert "weight_decay 0.05 -> 0.2" in caplog.text


def test_an_unchanged_resume_keeps_the_checkpoints_values_and_says_nothing(tmp_path, caplog):
    first = _run(tmp_path / "a", lr=0.1, weight_decay=0.05)
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        groups = _run(tmp_path / "a", lr=0.1, weight_decay=0.05, resume=True)
    assert [g[1:] for g in groups] == [g[1:] for g in first]
    assert groups[0][0] == pytest.approx(0.1 * (1 - SAVED_AT / MAX_ITER))
    assert "optimizer values apply" not in caplog.text and "other data settings" not in caplog.text


def test_other_data_settings_are_a_warning_naming_both_values(tmp_path, caplog):
    _run(tmp_path, lr=0.1, weight_decay=0.05)
    other = {**DATA, "dataset_size": 12, "total_batch_size": 4}
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        _run(tmp_path, lr=0.1, weight_decay=0.05, data=other, resume=True)
    assert "dataset_size 10 in the checkpoint's run, 12 now" in caplog.text
    assert "total_batch_size 2 in the checkpoint's run, 4 now" in caplog.text
    assert "grad_accum_steps" not in caplog.text
    assert "the data order is no longer that of an uninterrupted run" in caplog.text

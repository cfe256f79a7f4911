"""``--resume`` when ``last_checkpoint`` names a missing or empty file: a warning naming it, then
the newest readable periodic or final checkpoint; an error naming it when there is none."""
import logging
import os
import time

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402

# Modification times of the saved files one step apart: the fallback takes the newest file.
MTIME_STEP_S = 10


def _save_checkpoints(folder, iterations):
    """Checkpoints model_<i>.pth whose weights are all ``i``, in order; returns a fresh model."""
    model = nn.Linear(2, 2)
    checkpointer = TrainableCheckpointer(model, str(folder))
    start = time.time()
    for step, iteration in enumerate(iterations):
        nn.init.constant_(model.weight, iteration)
        name = f"model_{iteration:07d}"
        checkpointer.save(name, iteration=iteration)
        stamp = start + step * MTIME_STEP_S
        os.utime(folder / f"{name}.pth", (stamp, stamp))
    return nn.Linear(2, 2)


def _resume(folder, model, caplog):
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        loaded = TrainableCheckpointer(model, str(folder)).resume_or_load("", resume=True)
    return loaded["iteration"]


@pytest.mark.parametrize("broken", ["missing", "empty"])
def test_a_missing_or_empty_named_file_falls_back_to_the_newest_readable(tmp_path, caplog, broken):
    model = _save_checkpoints(tmp_path, [1, 3, 5])
    named = tmp_path / "model_0000005.pth"
    if broken == "missing":
        named.unlink()
    else:
        named.write_bytes(b"")
    (tmp_path / "model_best.pth").write_bytes(b"")  # never a fallback
    assert _resume(tmp_path, model, caplog) == 3
    assert torch.equal(model.weight, torch.full((2, 2), 3.0))
    problem = "does not exist" if broken == "missing" else "is empty"
    assert f"{named} (named in last_checkpoint) {problem}" in caplog.text
    assert f"resuming from {tmp_path / 'model_0000003.pth'}" in caplog.text


def test_an_unreadable_fallback_is_named_and_skipped(tmp_path, caplog):
    model = _save_checkpoints(tmp_path, [1, 3, 5])
    (tmp_path / "model_0000005.pth").unlink()
    (tmp_path / "model_0000003.pth").write_bytes(b"truncated")
    assert _resume(tmp_path, model, caplog) == 1
    assert f"Not resuming from {tmp_path / 'model_0000003.pth'}" in caplog.text


def test_an_empty_last_checkpoint_file_falls_back_too(tmp_path, caplog):
    model = _save_checkpoints(tmp_path, [1, 3])
    (tmp_path / "last_checkpoint").write_text("")
    assert _resume(tmp_path, model, caplog) == 3
    assert "last_checkpoint (named in last_checkpoint) names no file" in caplog.text


def test_no_readable_checkpoint_is_an_error_naming_the_file(tmp_path, caplog):
    model = _save_checkpoints(tmp_path, [1])
    (tmp_path / "model_0000001.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"model_0000001\.pth .*does not exist.*no other"):
        _resume(tmp_path, model, caplog)

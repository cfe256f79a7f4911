"""Divergence is named: non-finite predictions or losses stop training with
``FloatingPointError`` before the matcher runs, naming the iteration and the likely causes, and
nothing non-finite is ever saved."""
import os

import pytest
import torch
from test_criterion import _criterion, _outputs, _sem_segs, _targets
from torch import nn

from dinov3_m2f.weights.files import save_finite

pytest.importorskip("detectron2")

from detectron2.engine import hooks  # noqa: E402

from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.d2.solver import get_param_groups  # noqa: E402
from dinov3_m2f.d2.trainer import SegTrainer  # noqa: E402


class _MatcherSpy(nn.Module):
    """Wraps a matcher and records the inputs it was called with."""

    def __init__(self, matcher):
        super().__init__()
        self.matcher = matcher
        self.calls = 0

    def forward(self, outputs, targets):
        self.calls += 1
        return self.matcher(outputs, targets)


class _DivergingSegmenter(nn.Module):
    """Mask2Former-like predictions scaled by a learnable weight; the criterion gives the losses.
    The batch's ``blow_up`` multiplies one auxiliary layer's masks by it (Inf or NaN)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.criterion = _criterion(num_points=64)
        self.criterion.matcher = _MatcherSpy(self.criterion.matcher)

    def forward(self, batch):
        outputs = _outputs(2, (16, 16))
        for layer in [outputs, *outputs["aux_outputs"]]:
            layer["pred_masks"] = layer["pred_masks"] * self.scale
        outputs["aux_outputs"][1]["pred_masks"] = outputs["aux_outputs"][1]["pred_masks"] * batch["blow_up"]
        return self.criterion(outputs, _targets(_sem_segs()))


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")])
def test_non_finite_predictions_stop_before_the_matcher_naming_iteration_and_causes(tmp_path, bad_value):
    model = _DivergingSegmenter()
    data = iter([{"blow_up": 1.0}, {"blow_up": 1.0}, {"blow_up": bad_value}, {"blow_up": 1.0}])
    optimizer = torch.optim.SGD(get_param_groups(model, base_lr=1e-3, weight_decay=0.0))
    trainer = SegTrainer(model, data, optimizer, device=torch.device("cpu"))
    checkpointer = TrainableCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period=1)])

    with pytest.raises(FloatingPointError) as info:
        trainer.train(0, 4)
    message = str(info.value)
    assert "at iteration 2" in message
    assert "learning rate" in message and "train.amp.dtype=bfloat16" in message
    # matched once per decoder layer (final + 2 auxiliary) in iterations 0 and 1, never after
    assert model.criterion.matcher.calls == 2 * 3
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_0000000.pth", "model_0000001.pth"
    ]
    assert torch.isfinite(model.scale)


def test_criterion_returns_nan_losses_without_matching_non_finite_predictions():
    criterion = _criterion(num_points=64)
    criterion.matcher = _MatcherSpy(criterion.matcher)
    outputs = _outputs(2, (16, 16))
    outputs["pred_logits"][0, 0, 0] = float("nan")
    losses = criterion(outputs, _targets(_sem_segs()))
    assert criterion.matcher.calls == 0
    assert set(losses) == set(criterion.weight_dict)
    assert all(torch.isnan(value) for value in losses.values())


def test_nothing_non_finite_is_saved(tmp_path):
    model = nn.Linear(2, 2)
    checkpointer = TrainableCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000")
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"model_0000001\.pth: 1 tensors hold NaN or Inf \(model\.bias\)"):
        checkpointer.save("model_0000001")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read() == "model_0000000.pth"
    # optimizer and other trainer state are checked too, nested at any depth
    state = {"model": {"w": torch.zeros(2)}, "trainer": {"optimizer": {"state": {3: {"exp_avg": torch.tensor([float("nan")])}}}}}
    with pytest.raises(FloatingPointError, match=r"trainer\.optimizer\.state\.3\.exp_avg"):
        save_finite(state, str(tmp_path / "other.pth"))
    assert not os.path.exists(tmp_path / "other.pth")

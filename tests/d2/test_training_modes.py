"""Training modes of the Detectron2 layer: partial training (train.trainable / train.freeze),
gradient accumulation, best checkpoint and early stopping (hooks, and end-to-end through
tools/train_net.py on the synthetic linear config)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.d2.hooks import (  # noqa: E402
    BestCheckpointer,
    EarlyStopping,
    SegEvalHook,
    SegPeriodicCheckpointer,
)
from dinov3_m2f.d2.solver import get_param_groups  # noqa: E402
from dinov3_m2f.d2.trainer import SegTrainer  # noqa: E402
from dinov3_m2f.training import frozen_state_prefixes, set_trainable  # noqa: E402

from helpers import REPO  # noqa: E402
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
LINEAR_CONFIG = os.path.join(REPO, "configs", "synthetic", "linear_tiny_synthetic.py")
SUBPROCESS_TIMEOUT_S = 600
CPU = torch.device("cpu")


class _Net(nn.Module):
    """Frozen 'vit', a BN 'adapter', a head with a classifier; loss = mean over samples."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vit = nn.Linear(3, 4)
        self.vit.requires_grad_(False)
        self.adapter = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.head = nn.Sequential()
        self.head.add_module("proj", nn.Linear(4, 4))
        self.head.add_module("class_embed", nn.Linear(4, 2))

    def forward(self, batch):
        out = self.head(self.adapter(self.vit(batch["x"])))  # [N, 2]
        return {"loss": (out - batch["y"]).pow(2).mean()}


def _batches(num, size, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(size, 3, generator=g), "y": torch.randn(size, 2, generator=g)}
            for _ in range(num)]


# ---------------------------------------------------------------- partial training


def test_set_trainable_validates_prefixes():
    with pytest.raises(ValueError, match=r"train.trainable: no module named \['head.nope'\]"):
        set_trainable(_Net(), trainable=["head.nope"])
    with pytest.raises(ValueError, match=r"train.freeze: no module named \['decoder'\]"):
        set_trainable(_Net(), freeze=["decoder"])
    with pytest.raises(ValueError, match="'vit' has no trainable parameter"):
        set_trainable(_Net(), trainable=["vit"])
    with pytest.raises(ValueError, match="no trainable parameter"):
        set_trainable(_Net(), freeze=["adapter", "head"])
    model = _Net()
    assert set_trainable(model, freeze=["adapter.1"]) == ["adapter.1"]
    assert model.adapter[0].weight.requires_grad and not model.adapter[1].weight.requires_grad


def test_partial_training_changes_only_named_modules_and_checkpoint_restores(tmp_path):
    model = _Net()
    rebuilt = frozen_state_prefixes(model)
    assert rebuilt == ["vit."]
    frozen = set_trainable(model, trainable=["head.class_embed"])
    assert frozen == ["adapter", "head.proj"]
    groups = get_param_groups(model, base_lr=0.1, weight_decay=0.0)
    optimized = {id(p) for g in groups for p in g["params"]}
    assert optimized == {id(p) for p in model.head.class_embed.parameters()}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SegTrainer(
        model, iter(_batches(3, 4)), torch.optim.SGD(groups), device=CPU,
        eval_modules=[model.get_submodule(n) for n in frozen],
    )
    checkpointer = TrainableCheckpointer(model, str(tmp_path), exclude_prefixes=rebuilt,
                                         trainer=trainer)
    trainer.train(0, 3)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    # BatchNorm statistics of the frozen adapter stay fixed too (eval mode).
    assert changed == {"head.class_embed.weight", "head.class_embed.bias"}

    checkpointer.save("partial")
    saved = torch.load(tmp_path / "partial.pth", weights_only=True)["model"]
    # Config-frozen modules are saved (they came from an init checkpoint), the ViT is not.
    assert "adapter.0.weight" in saved and "adapter.1.running_mean" in saved
    assert not any(k.startswith("vit.") for k in saved)
    fresh = _Net(seed=5)
    fresh.vit.load_state_dict(model.vit.state_dict())  # rebuilt from its own weights/seed
    set_trainable(fresh, trainable=["head.class_embed"])
    TrainableCheckpointer(fresh, strict=True).load(str(tmp_path / "partial.pth"))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


# ---------------------------------------------------------------- gradient accumulation


def _one_step_params(batches, accum):
    model = _Net()
    model.adapter[1].eval()  # no batch-statistics dependence
    trainer = SegTrainer(
        model, iter(batches), torch.optim.SGD(get_param_groups(model, base_lr=0.5, weight_decay=0.0)),
        device=CPU, grad_accum_steps=accum,
    )
    trainer.eval_modules = [model.adapter[1]]
    trainer.train(0, 1)
    return trainer, [p.detach().clone() for p in model.parameters()]


def test_grad_accumulation_equals_large_batch_and_counts_steps():
    micro = _batches(2, 3)
    large = [{k: torch.cat([b[k] for b in micro]) for k in micro[0]}]
    _, accumulated = _one_step_params(micro, accum=2)
    _, reference = _one_step_params(large, accum=1)
    for a, r in zip(accumulated, reference):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)

    data = _batches(6, 2)
    model = _Net()
    consumed = iter(data)
    trainer = SegTrainer(
        model, consumed, torch.optim.SGD(get_param_groups(model, base_lr=0.1, weight_decay=0.0)),
        device=CPU, grad_accum_steps=2, clip_grad_max_norm=1e-3,
    )
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    trainer.train(0, 3)
    assert trainer.iter == 3  # iterations = optimizer steps
    assert next(consumed, None) is None  # 3 steps x 2 micro-batches
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    change = torch.cat([(a - b).flatten() for a, b in zip(after, before)]).norm()
    # clipped once per step: at most lr x max_norm per step
    assert 0 < change <= 3 * 0.1 * 1e-3 + 1e-7


# ---------------------------------------------------------------- best checkpoint / early stop


def _run_with_metrics(tmp_path, values, *, max_iter, patience=None, metric_key="mIoU"):
    """Train ``_Net`` evaluating every iteration; the i-th evaluation reports ``values[i]``
    as ``sem_seg/<metric_key>``."""
    model = _Net()
    trainer = SegTrainer(
        model, iter(_batches(max_iter, 4)),
        torch.optim.SGD(get_param_groups(model, base_lr=0.1, weight_decay=0.0)), device=CPU,
    )
    checkpointer = TrainableCheckpointer(model, str(tmp_path), trainer=trainer)
    snapshots = []

    def evaluate():
        snapshots.append(model.head.class_embed.weight.detach().clone())
        return {"sem_seg": {metric_key: values[len(snapshots) - 1] if values else 0.0}}

    best = BestCheckpointer(1, checkpointer, "sem_seg/mIoU")
    hook_list = [SegPeriodicCheckpointer(checkpointer, period=1000), SegEvalHook(1, evaluate), best]
    if patience is not None:
        hook_list.append(EarlyStopping(best, eval_period=1, patience=patience))
    trainer.register_hooks(hook_list)
    trainer.train(0, max_iter)
    return trainer, snapshots


def test_best_checkpoint_holds_the_best_evaluation(tmp_path):
    values = [10.0, 30.0, 20.0, 25.0, 5.0]
    _, snapshots = _run_with_metrics(tmp_path, values, max_iter=5)
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert best["checkpoint_kind"] == "trainable"
    assert best["iteration"] == 1
    assert torch.equal(best["model"]["head.class_embed.weight"], snapshots[1])
    assert not torch.equal(snapshots[1], snapshots[-1])
    assert best["trainer"]["hooks"]["BestCheckpointer"]["best_metric"] == 30.0


def test_early_stopping_after_patience_evaluations(tmp_path):
    trainer, snapshots = _run_with_metrics(tmp_path, [5.0] * 10, max_iter=10, patience=2)
    assert trainer.max_iter == 3 and trainer.iter == 3
    assert "did not improve for 2 evaluations" in trainer.stop_reason
    assert len(snapshots) == 3  # no second evaluation of the last weights
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 2
    assert torch.equal(final["model"]["head.class_embed.weight"], snapshots[-1])
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 0


def test_early_stopping_counter_resets_on_improvement(tmp_path):
    trainer, _ = _run_with_metrics(tmp_path, [1.0, 0.5, 2.0, 1.0, 1.5, 0.0], max_iter=6,
                                   patience=2)
    # best at iteration 2, no improvement at 3 and 4 -> stop after iteration 4
    assert trainer.max_iter == 5
    with pytest.raises(ValueError, match="best checkpointer"):
        EarlyStopping(None, eval_period=1, patience=1)


def test_best_checkpoint_names_a_metric_the_evaluation_lacks(tmp_path):
    with pytest.raises(KeyError, match="no 'sem_seg/mIoU'.*look like"):
        _run_with_metrics(tmp_path, [], max_iter=2, metric_key="miou")


# ---------------------------------------------------------------- end-to-end (train_net)


def _train(env, out, *overrides):
    command = [sys.executable, TRAIN_NET, "--config-file", LINEAR_CONFIG,
               f"train.output_dir={out}", "dataloader.train.total_batch_size=2",
               "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
               "train.log_period=1", "train.checkpointer.period=1000", *overrides]
    proc = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(out, "metrics.json")) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return proc.stdout + proc.stderr, [e for e in entries if "sem_seg/mIoU" in e]


def test_train_net_best_checkpoint_and_accumulation(synthetic_env, tmp_path):
    out = str(tmp_path / "best")
    _, evals = _train(synthetic_env, out, "train.max_iter=8", "train.eval_period=2",
                      "train.grad_accum_steps=2")
    # the final evaluation is stored one past the last iteration (detectron2's storage), and
    # model_best.pth records the iteration its metric was stored at
    assert [e["iteration"] for e in evals] == [1, 3, 5, 8]
    best = torch.load(os.path.join(out, "model_best.pth"), weights_only=True)
    assert best["iteration"] == max(evals, key=lambda e: e["sem_seg/mIoU"])["iteration"]  # 1st of ties
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 7


def test_train_net_head_only_flat_metric_stops_early(synthetic_env, tmp_path):
    out = str(tmp_path / "stop")
    # lr 0 and a frozen (eval-mode) BatchNorm: the metric cannot change.
    log, evals = _train(synthetic_env, out, "train.max_iter=50", "train.eval_period=2",
                        "optimizer.lr=0.0", "train.trainable=[sem_seg_head.conv]",
                        "train.early_stopping={patience:1}")
    assert "Stopping after iteration 3 of 50: early stopping" in log
    assert [e["iteration"] for e in evals] == [1, 3]
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 3
    assert "sem_seg_head.batchnorm_layer.running_mean" in final["model"]
    best = torch.load(os.path.join(out, "model_best.pth"), weights_only=True)
    assert best["iteration"] == 1

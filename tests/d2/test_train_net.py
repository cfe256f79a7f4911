"""tools/train_net.py and its trainer pieces: param groups, checkpoints, NaN stop, override
checks; end-to-end on CPU: train -> checkpoint -> --eval-only, --resume, 2 processes (gloo)."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.config import LazyConfig  # noqa: E402
from detectron2.engine import hooks  # noqa: E402
from torch import nn  # noqa: E402

from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.config_schema import check_override_keys  # noqa: E402
from dinov3_m2f.d2.solver import get_param_groups  # noqa: E402
from dinov3_m2f.d2.trainer import SegTrainer  # noqa: E402
from dinov3_m2f.training import frozen_state_prefixes  # noqa: E402
from helpers import kill_when_file_appears  # noqa: E402

from helpers import REPO  # noqa: E402
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
FROZEN_PREFIX = "backbone.adapter.backbone."
# Keep the end-to-end runs small: 2 images per step, few points, no worker processes.
FAST_OVERRIDES = [
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "model.criterion.num_points=256",
    "train.log_period=1",
]
SUBPROCESS_TIMEOUT_S = 600


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- unit tests (no subprocess)


class _Tiny(nn.Module):
    """A frozen 'backbone' (with a buffer), a norm, an embedding-like query and a linear layer."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.backbone.register_buffer("periods", torch.ones(2))
        self.backbone.requires_grad_(False)
        self.norm = nn.LayerNorm(2)
        self.query_feat = nn.Parameter(torch.zeros(3, 2))
        self.head = nn.Linear(2, 1)

    def forward(self, batch):
        x = self.norm(self.backbone(batch["x"])) + self.query_feat.sum()
        return {"loss": self.head(x).pow(2).mean() * batch["scale"]}


def test_param_groups_trainable_only_with_multipliers_and_no_decay():
    model = _Tiny()
    groups = get_param_groups(
        model, base_lr=1.0, weight_decay=0.05, lr_multipliers={"head": 0.1}
    )
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert id(model.backbone.weight) not in by_param
    assert by_param[id(model.head.weight)] == (0.1, 0.05)
    assert by_param[id(model.norm.weight)] == (1.0, 0.0)
    assert by_param[id(model.query_feat)] == (1.0, 0.0)
    assert len(by_param) == 5  # norm w/b, query, head w/b
    with pytest.raises(ValueError, match="no module named"):
        get_param_groups(model, base_lr=1.0, weight_decay=0.0, lr_multipliers={"decoder": 2.0})


def test_trainable_checkpoint_excludes_frozen_and_loads_both_kinds(tmp_path):
    model = _Tiny()
    assert frozen_state_prefixes(model) == ["backbone."]
    TrainableCheckpointer(model, str(tmp_path)).save("trainable")
    TrainableCheckpointer(model, str(tmp_path), full=True).save("full")
    trainable = torch.load(tmp_path / "trainable.pth", weights_only=True)
    full = torch.load(tmp_path / "full.pth", weights_only=True)
    assert trainable["checkpoint_kind"] == "trainable"
    assert not any(k.startswith("backbone.") for k in trainable["model"])
    assert "backbone.weight" in full["model"] and "backbone.periods" in full["model"]
    assert (tmp_path / "last_checkpoint").read_text() == "full.pth"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp_")]

    other = _Tiny()
    TrainableCheckpointer(other, strict=True).load(str(tmp_path / "trainable.pth"))
    assert torch.equal(other.head.weight, model.head.weight)
    assert not torch.equal(other.backbone.weight, model.backbone.weight)
    TrainableCheckpointer(other, strict=True).load(str(tmp_path / "full.pth"))
    assert torch.equal(other.backbone.weight, model.backbone.weight)


def test_strict_load_reports_missing_trainable_keys(tmp_path):
    model = _Tiny()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    torch.save({"model": state, "checkpoint_kind": "trainable"}, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match=r"partial\.pth .*missing in the file: head\.\{bias, weight\}"):
        TrainableCheckpointer(_Tiny(), strict=True).load(str(tmp_path / "partial.pth"))


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle"):
        TrainableCheckpointer(_Tiny()).load(str(path))


def test_non_finite_loss_stops_with_iteration_and_no_checkpoint_after(tmp_path):
    model = _Tiny()
    scales = [1.0, 1.0, float("nan"), 1.0]
    data = iter([{"x": torch.ones(4, 2), "scale": s} for s in scales])
    optimizer = torch.optim.SGD(get_param_groups(model, base_lr=0.1, weight_decay=0.0))
    trainer = SegTrainer(model, data, optimizer, device=torch.device("cpu"), clip_grad_max_norm=1.0)
    checkpointer = TrainableCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period=1)])

    with pytest.raises(FloatingPointError, match="iteration 2"):
        trainer.train(0, len(scales))
    saved = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert saved == ["model_0000000.pth", "model_0000001.pth"]
    head_before_nan = torch.load(tmp_path / "model_0000001.pth", weights_only=True)["model"]
    assert torch.equal(head_before_nan["head.weight"], model.head.weight)
    assert torch.isfinite(model.head.weight).all()


@pytest.mark.parametrize("amp_dtype", [None, "bfloat16", "float16"])
def test_trainer_steps_with_amp_and_clipping(amp_dtype):
    model = _Tiny()
    # A small loss keeps the fp16 GradScaler's scaled loss (initial scale 2**16) finite, so no
    # step is skipped for overflow whatever the random init.
    data = iter([{"x": torch.ones(4, 2), "scale": 1e-3}] * 2)
    optimizer = torch.optim.SGD(get_param_groups(model, base_lr=0.1, weight_decay=0.0))
    trainer = SegTrainer(
        model, data, optimizer, device=torch.device("cpu"), amp_dtype=amp_dtype,
        clip_grad_max_norm=1e-3,
    )
    before = model.head.weight.detach().clone()
    trainer.train(0, 2)
    change = (model.head.weight - before).norm()
    # two SGD steps of lr 0.1 on gradients clipped to a global norm of 1e-3
    assert 0 < change <= 2 * 0.1 * 1e-3 + 1e-6
    assert (trainer.grad_scaler is not None) == (amp_dtype == "float16")


def test_unknown_override_key_is_named():
    cfg = LazyConfig.load(CONFIG)
    # optional constructor arguments left at their default are accepted, also those the model
    # inherits from its base class (test_mode)
    check_override_keys(
        cfg, ["train.max_iter=3", "model.sem_seg_head.dropout=0.1", "model.test_mode=slide"]
    )
    for key in ("train.max_iterz", "model.sem_seg_head.dropoutz", "model.test_modez"):
        with pytest.raises(KeyError, match=key):
            check_override_keys(cfg, [f"{key}=3"])


# ---------------------------------------------------------------- end-to-end (subprocesses)


def _command(output_dir, *extra):
    return [sys.executable, TRAIN_NET, "--config-file", CONFIG, *extra,
            f"train.output_dir={output_dir}", *FAST_OVERRIDES]


def _run(env, output_dir, *extra):
    proc = subprocess.run(
        _command(output_dir, *extra), env=env, capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _final_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return [e for e in entries if "sem_seg/mIoU" in e][-1]


def test_train_then_eval_only_reproduces_metrics(synthetic_env, tmp_path):
    out = str(tmp_path / "run")
    _run(synthetic_env, out, "train.max_iter=3", "train.checkpointer.period=2",
         "train.eval_period=0")
    files = sorted(os.listdir(out))
    assert {"model_0000001.pth", "model_final.pth", "last_checkpoint", "metrics.json"} <= set(files)
    assert any(f.startswith("events.out.tfevents") for f in files)
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert ckpt["checkpoint_kind"] == "trainable" and ckpt["iteration"] == 2
    assert not any(k.startswith(FROZEN_PREFIX) for k in ckpt["model"])
    assert "optimizer" in ckpt["trainer"] and "LRScheduler" in ckpt["trainer"]["hooks"]
    trained = _final_metrics(out)

    eval_out = str(tmp_path / "eval")
    _run(synthetic_env, eval_out, "--eval-only", f"train.init_checkpoint={out}/model_final.pth")
    with open(os.path.join(eval_out, "eval_results.json")) as f:
        evaluated = json.load(f)["sem_seg"]
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert evaluated[key] == pytest.approx(trained[f"sem_seg/{key}"], abs=1e-6)
    # the log files: the config file without colour codes; the test set listed once
    with open(os.path.join(out, "log.txt")) as f:
        train_log = f.read()
    assert "Contents of args.config_file=" in train_log and "\x1b[" not in train_log
    with open(os.path.join(eval_out, "log.txt")) as f:
        eval_log = f.read()
    assert len(re.findall(r"Loaded \d+ images from .*synthetic.*val", eval_log)) == 1, eval_log


def test_resume_continues_from_the_saved_iteration(synthetic_env, tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    last = os.path.join(out, "last_checkpoint")
    kill_when_file_appears(
        _command(out, "train.max_iter=1000", "train.checkpointer.period=2", "train.eval_period=0"),
        env=synthetic_env, path=last, timeout_s=SUBPROCESS_TIMEOUT_S,
    )
    with open(last) as f:
        saved_iter = int(re.fullmatch(r"model_(\d+)\.pth", f.read().strip()).group(1))

    log = _run(synthetic_env, out, "--resume", f"train.max_iter={saved_iter + 3}",
               "train.eval_period=0")
    assert f"Starting training from iteration {saved_iter + 1}" in log
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == saved_iter + 2


def test_two_cpu_processes_end_with_identical_weights(synthetic_env, tmp_path):
    out = str(tmp_path / "ddp")
    script = tmp_path / "ddp_train.py"
    # Runs train_net's main through launch() and dumps every rank's final weights; the patch is
    # at module level so that the spawned workers (which re-import this file) apply it too.
    script.write_text(
        f"""
import os, sys, torch
from detectron2.engine import launch
from detectron2.utils import comm
sys.path.insert(0, {os.path.dirname(TRAIN_NET)!r})
import train_net  # importable by name: the spawned workers unpickle train_net.main

original_do_train = train_net.do_train

def do_train_and_dump(args, cfg):
    trainer = original_do_train(args, cfg)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    path = os.path.join(cfg.train.output_dir, f"rank{{comm.get_rank()}}.pth")
    torch.save(model.state_dict(), path)
    return trainer

train_net.do_train = do_train_and_dump
if __name__ == "__main__":
    args = train_net.argument_parser().parse_args()
    launch(train_net.main, args.num_gpus, dist_url=args.dist_url, args=(args,))
"""
    )
    command = _command(out, "--num-gpus", "2", "--dist-url", "auto", "train.max_iter=3",
                       "train.eval_period=0", "train.checkpointer.period=100")
    command[1] = str(script)
    proc = subprocess.run(command, env=synthetic_env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert "World size: 2" in log
    rank0 = torch.load(os.path.join(out, "rank0.pth"), weights_only=True)
    rank1 = torch.load(os.path.join(out, "rank1.pth"), weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    assert torch.equal(saved["sem_seg_head.predictor.query_feat.weight"],
                       rank0["sem_seg_head.predictor.query_feat.weight"])

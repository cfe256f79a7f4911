"""``train.compile``: the backbone and head of a config's model compiled in place, for training,
evaluation and the predictor, on the tiny synthetic config.

Compiled with the ``aot_eager`` backend (Dynamo + AOTAutograd, as tests/modeling/test_torch_compile.py):
what the switch wires up, without minutes in Inductor's C++ compiler. The Inductor speed-up is
measured by ``dev/benchmark.py --opts train.compile=True`` (docs/benchmarks.md).
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from helpers import load_tool  # noqa: E402
from torch import nn  # noqa: E402

from dinov3_m2f.d2.config import load_config  # noqa: E402
from dinov3_m2f.layers import MSDeformAttn, _extension  # noqa: E402
from dinov3_m2f.modeling.torch_compile import compile_parts  # noqa: E402

from helpers import REPO  # noqa: E402
CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
TRAIN_TIMEOUT_S = 600
AOT_EAGER = "train.compile={backend:aot_eager}"
OP_NAME = "dinov3_m2f.ms_deform_attn_forward"
NUM_CLASSES = 7
IMAGE_SIZE = 64

train_net = load_tool("train_net")


@pytest.fixture
def dynamo():
    """The compiled op (the one whose graph breaks matter) and a clean Dynamo cache."""
    if not _extension.is_available():
        pytest.fail(f"dinov3_m2f._C is not built: {_extension._LOAD_ERROR}")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _build(*overrides: str) -> nn.Module:
    cfg = load_config(CONFIG, overrides=["train.device=cpu", "model.criterion.num_points=256", *overrides])
    torch.manual_seed(0)
    model, _ = train_net.build_model(cfg)
    return model


def _batch() -> list:
    gen = torch.Generator().manual_seed(1)
    return [
        {"image": torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=gen),
         "sem_seg": torch.randint(0, NUM_CLASSES, (IMAGE_SIZE, IMAGE_SIZE), generator=gen)}
        for _ in range(2)
    ]


def _training_step(model: nn.Module):
    """Weighted losses and the gradients of every trainable parameter (point sampling seeded)."""
    model.train()
    torch.manual_seed(2)
    losses = model(_batch())
    params = [p for p in model.parameters() if p.requires_grad]
    return losses, torch.autograd.grad(sum(losses.values()), params)


def test_train_compile_trains_and_evaluates_like_eager(dynamo):
    eager, compiled = _build(), _build(AOT_EAGER)
    assert eager.backbone._compiled_call_impl is None
    assert compiled.backbone._compiled_call_impl is not None
    assert compiled.sem_seg_head._compiled_call_impl is not None
    assert compiled.criterion._compiled_call_impl is None  # the matcher stays eager
    # in place: the same state-dict keys (no "_orig_mod."), so checkpoints do not change
    assert list(compiled.state_dict()) == list(eager.state_dict())

    eager_losses, eager_grads = _training_step(eager)
    losses, grads = _training_step(compiled)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # backbone and head
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-5)
    for grad, expected in zip(grads, eager_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-5)

    inputs = [{"image": item["image"]} for item in _batch()]
    with torch.no_grad():
        expected = eager.eval()(inputs)
        outputs = compiled.eval()(inputs)
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out["sem_seg"], ref["sem_seg"], rtol=1e-4, atol=1e-5)


def test_train_net_trains_and_evaluates_with_train_compile(synthetic_env, tmp_path):
    # tools/train_net.py end to end: 2 iterations, then the final evaluation, both compiled;
    # Dynamo logs every graph break (TORCH_LOGS=graph_breaks) and there must be none.
    out = str(tmp_path / "run")
    command = [sys.executable, TRAIN_NET, "--config-file", CONFIG, f"train.output_dir={out}", AOT_EAGER,
               "train.max_iter=2", "train.eval_period=0", "train.checkpointer.period=100",
               "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
               "dataloader.test.num_workers=0", "model.criterion.num_points=256", "train.log_period=1"]
    proc = subprocess.run(command, env=dict(synthetic_env, TORCH_LOGS="graph_breaks"), capture_output=True,
                          text=True, timeout=TRAIN_TIMEOUT_S)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Compiling backbone, sem_seg_head with torch.compile({'backend': 'aot_eager'})" in log
    assert "Graph break" not in log, log[log.find("Graph break"):][:2000]
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [0, 1]
    assert all(torch.isfinite(torch.tensor(m["total_loss"])) for m in metrics if "total_loss" in m)
    final = [m for m in metrics if "sem_seg/mIoU" in m][-1]
    assert 0 <= final["sem_seg/mIoU"] <= 100
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert not any("_orig_mod" in key for key in ckpt["model"])  # checkpoints as without compile


def test_d2_backbone_traces_into_one_graph_with_the_op(dynamo):
    backbone = _build().backbone.eval()
    images = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        explanation = torch._dynamo.explain(backbone)(images)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    (graph,) = explanation.graphs
    op_calls = [node for node in graph.graph.nodes if OP_NAME in str(node.target)]
    assert len(op_calls) == sum(isinstance(m, MSDeformAttn) for m in backbone.modules()) > 0


def test_predictor_honours_train_compile(dynamo, tiny_synthetic_checkpoint):
    from dinov3_m2f.d2.predictor import SemSegPredictor

    image = torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8).numpy()
    probs = {}
    for name, overrides in (("eager", []), ("compiled", [AOT_EAGER])):
        predictor = SemSegPredictor.from_config(CONFIG, checkpoint=tiny_synthetic_checkpoint, device="cpu",
                                                overrides=overrides)
        assert (predictor.model.backbone._compiled_call_impl is not None) == (name == "compiled")
        _, probs[name] = predictor(image, return_probs=True)
    torch.testing.assert_close(probs["compiled"], probs["eager"], rtol=1e-4, atol=1e-5)


def test_compile_setting_errors_are_named():
    model = nn.Module()
    model.backbone, model.sem_seg_head = nn.Linear(2, 2), nn.Linear(2, 2)
    compile_parts(model, False)
    assert model.backbone._compiled_call_impl is None
    with pytest.raises(TypeError, match="bool or a mapping.*'yes'"):
        compile_parts(model, "yes")
    with pytest.raises(TypeError, match=r"torch.compile takes no \['bakend'\]"):
        compile_parts(model, {"bakend": "aot_eager"})
    with pytest.raises(AttributeError, match=r"Linear has no \['backbone', 'sem_seg_head'\]"):
        compile_parts(nn.Linear(2, 2), True)
    compile_parts(model, {"backend": "aot_eager"})
    assert model.backbone._compiled_call_impl is not None

"""torch.compile of the core model (DINOv3 ViT + adapter + Mask2Former head) with the compiled op.

The tests trace with Dynamo (``torch._dynamo.explain``) and run the ``aot_eager`` backend: Dynamo,
FakeTensor propagation through the op's registered fake implementations and AOTAutograd, without
spending minutes in Inductor's C++ compiler on a shared CPU. Inductor's speed-up is measured by
``dev/benchmark.py compile`` (docs/benchmarks.md).
"""
import pytest
import torch
import torch._dynamo
from torch import nn

from dinov3_m2f.layers import MSDeformAttn, _extension
from dinov3_m2f.modeling.segmentor import build_tiny_segmentor

IMAGE_SHAPE = (2, 3, 64, 96)
OP_NAME = "dinov3_m2f.ms_deform_attn_forward"
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@pytest.fixture
def compiled():
    """The compiled extension must be built for these tests (CI builds it): fail, never skip."""
    if not _extension.is_available():
        pytest.fail(f"dinov3_m2f._C is not built: {_extension._LOAD_ERROR}")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_model() -> nn.Sequential:
    """The tiny config's adapter (with its frozen ViT) and head; MSDeformAttn uses the compiled op."""
    torch.manual_seed(0)
    model = nn.Sequential(*build_tiny_segmentor())
    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.impl = "compiled"
    return model


def predictions(out) -> list:
    """The final and auxiliary class and mask logits as one flat list."""
    return [p[key] for p in [out, *out["aux_outputs"]] for key in ("pred_logits", "pred_masks")]


def images() -> torch.Tensor:
    return torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(1))


def autocast(amp: str) -> torch.autocast:
    dtype = AMP_DTYPES[amp]
    return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)


@pytest.mark.parametrize("amp", sorted(AMP_DTYPES))
def test_inference_traces_into_one_graph_with_the_op(compiled, amp):
    model = tiny_model().eval()
    with torch.no_grad(), autocast(amp):
        explanation = torch._dynamo.explain(model)(images())
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    (graph,) = explanation.graphs
    op_calls = [node for node in graph.graph.nodes if OP_NAME in str(node.target)]
    assert len(op_calls) == sum(isinstance(m, MSDeformAttn) for m in model.modules())


def test_compiled_bf16_inference_matches_eager(compiled):
    model = tiny_model().eval()
    x = images()
    with torch.no_grad(), autocast("bf16"):
        eager = model(x)
        out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert out["pred_masks"].dtype == torch.bfloat16
    for got, expected in zip(predictions(out), predictions(eager)):
        torch.testing.assert_close(got, expected)


def test_compiled_training_step_matches_eager(compiled):
    eager_model = tiny_model().train()
    compiled_model = tiny_model().train()
    x = images()

    def step(model):
        loss = sum(t.square().mean() for t in predictions(model(x)))
        params = [p for p in model.parameters() if p.requires_grad]
        return loss, torch.autograd.grad(loss, params)

    eager_loss, eager_grads = step(eager_model)
    loss, grads = step(torch.compile(compiled_model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(loss, eager_loss)
    for grad, expected in zip(grads, eager_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)

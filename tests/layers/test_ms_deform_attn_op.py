"""Tests of the compiled multi-scale deformable attention op against the grid_sample reference."""
import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from dinov3_m2f.layers import _extension
from dinov3_m2f.layers.ms_deform_attn_func import ms_deform_attn, ms_deform_attn_pytorch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (batch, queries, heads, channels, level shapes (H, W), points)
SHAPES = [
    (1, 5, 1, 3, [(7, 5)], 1),
    (2, 9, 4, 6, [(6, 8), (3, 4), (2, 1)], 4),
    (3, 4, 8, 5, [(5, 3), (2, 7), (1, 1)], 2),
    (1, 3, 2, 33, [(4, 4)], 3),  # more channels than a warp
]
# small enough for finite differences
GRADCHECK_SHAPE = (2, 3, 2, 3, [(4, 3), (2, 2)], 2)
# sampling locations are drawn from this range, so some fall outside [0, 1] (zero padding)
LOCATION_RANGE = (-0.3, 1.3)


@pytest.fixture
def compiled():
    """The compiled extension must be built for these tests (CI builds it): fail, never skip."""
    if not _extension.is_available():
        pytest.fail(f"dinov3_m2f._C is not built: {_extension._LOAD_ERROR}")


def make_inputs(shape, *, dtype=torch.float64, device="cpu", seed=0):
    batch, queries, heads, channels, levels, points = shape
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)  # [L, 2]
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])  # [L]
    num_values = int(areas.sum())
    low, high = LOCATION_RANGE
    value = torch.randn(batch, num_values, heads, channels, generator=gen, dtype=torch.float64)
    locations = torch.rand(
        batch, queries, heads, len(levels), points, 2, generator=gen, dtype=torch.float64
    ) * (high - low) + low
    weights = torch.rand(batch, queries, heads, len(levels), points, generator=gen, dtype=torch.float64)
    return (
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        locations.to(device, dtype),
        weights.to(device, dtype),
    )


def reference_with_grads(inputs, grad_output):
    """Output and (value, locations, weights) gradients of the reference in float64 on CPU."""
    value, shapes, starts, locations, weights = [t.detach().cpu() for t in inputs]
    leaves = [t.double().requires_grad_() for t in (value, locations, weights)]
    out = ms_deform_attn_pytorch(leaves[0], shapes, starts, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad_output.detach().cpu().double())
    return out.detach(), grads


def compiled_with_grads(inputs, grad_output):
    value, shapes, starts, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], impl="compiled")
    grads = torch.autograd.grad(out, leaves, grad_output)
    return out.detach(), grads


def max_abs(a, b):
    return (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(compiled, device, dtype, tol, shape):
    inputs = make_inputs(shape, dtype=dtype, device=device)
    grad_output = torch.randn(shape[0], shape[1], shape[2] * shape[3], dtype=dtype, device=device)
    out, grads = compiled_with_grads(inputs, grad_output)
    ref_out, ref_grads = reference_with_grads(inputs, grad_output)
    assert out.shape == (shape[0], shape[1], shape[2] * shape[3])
    assert out.dtype == dtype
    assert max_abs(out, ref_out) <= tol
    for name, grad, ref in zip(("value", "locations", "weights"), grads, ref_grads):
        # location gradients carry a factor H or W (<= 8 here)
        assert max_abs(grad, ref) <= 10 * tol, name


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(compiled, device):
    value, shapes, starts, locations, weights = make_inputs(GRADCHECK_SHAPE, device=device)
    value, locations, weights = (t.requires_grad_() for t in (value, locations, weights))

    def fn(v, loc, w):
        return ms_deform_attn(v, shapes, starts, loc, w, impl="compiled")

    assert torch.autograd.gradcheck(fn, (value, locations, weights))


@pytest.mark.parametrize("device", DEVICES)
def test_points_outside_contribute_nothing(compiled, device):
    value, shapes, starts, locations, weights = make_inputs(SHAPES[1], device=device)
    # a point at x = -1 / W is half a cell left of the first pixel centre-minus-one: no corner
    # of it is inside the level; likewise far away points
    locations = torch.full_like(locations, 2.0)
    locations[..., 0] = -1.5
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], impl="compiled")
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    for leaf in leaves:
        assert torch.count_nonzero(leaf.grad) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(compiled, device):
    value, shapes, starts, locations, weights = make_inputs(SHAPES[2], device=device)
    # same values, transposed storage
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    assert not value_nc.is_contiguous() and not weights_nc.is_contiguous()
    out = ms_deform_attn(value_nc, shapes, starts, locations, weights_nc, impl="compiled")
    ref = ms_deform_attn_pytorch(value, shapes, starts, locations, weights)
    assert max_abs(out, ref) <= 1e-10


# Half-precision I/O: a result rounded to the dtype is off by up to half an ulp (eps / 2 relative
# to its magnitude); the allowance covers that rounding plus the float rounding of the sums.
HALF_DTYPES = [torch.bfloat16, torch.float16]
HALF_ULPS = 2


def half_tolerance(dtype, reference):
    """Absolute tolerance for a result in ``dtype`` whose float64 value is ``reference``."""
    return HALF_ULPS * torch.finfo(dtype).eps * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_half_types_match_reference(compiled, device, dtype, shape):
    """Half-precision I/O with float accumulation, against float64 on the rounded inputs."""
    inputs = make_inputs(shape, dtype=dtype, device=device)
    grad_output = torch.randn(shape[0], shape[1], shape[2] * shape[3], device=device).to(dtype)
    out, grads = compiled_with_grads(inputs, grad_output)
    ref_out, ref_grads = reference_with_grads(inputs, grad_output)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert max_abs(out, ref_out) <= half_tolerance(dtype, ref_out)
    for name, grad, ref in zip(("value", "locations", "weights"), grads, ref_grads):
        assert max_abs(grad, ref) <= half_tolerance(dtype, ref), name


# Every query samples one 2x2 level at 256 points, so each output sums ~1000 products and each
# value element collects the gradients of 64 * 256 points. Summed in the half type instead, the
# outputs missed by 2.4x (float16) and 3.3x (bfloat16) the tolerance, and grad_value by more
# than 10x already with 64 points (measured by emulating such sums).
ACCUMULATION_SHAPE = (1, 64, 1, 4, [(2, 2)], 256)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_types_accumulate_in_float(compiled, device, dtype):
    value, shapes, starts, locations, weights = make_inputs(ACCUMULATION_SHAPE, dtype=dtype, device=device)
    # positive values, weights and output gradients: no cancellation hides the sums' rounding
    value, weights = value.abs(), weights.abs()
    inputs = (value, shapes, starts, locations.clamp(0, 1), weights)
    grad_output = torch.rand(1, 64, 4, device=device).to(dtype)
    out, grads = compiled_with_grads(inputs, grad_output)
    ref_out, ref_grads = reference_with_grads(inputs, grad_output)
    assert max_abs(out, ref_out) <= half_tolerance(dtype, ref_out)
    assert max_abs(grads[0], ref_grads[0]) <= half_tolerance(dtype, ref_grads[0])


# torch.cuda._sleep cycles: ~50 ms at 2 GHz, far longer than the op at these shapes
SLEEP_CYCLES = 100_000_000
# float32 tolerances against float64 (location gradients carry a factor H or W <= 8)
FLOAT32_TOL = 1e-5
FLOAT32_GRAD_TOL = 1e-4


def assert_float32_close(out, grads, ref_out, ref_grads):
    assert max_abs(out, ref_out) <= FLOAT32_TOL
    for name, grad, ref in zip(("value", "locations", "weights"), grads, ref_grads):
        assert max_abs(grad, ref) <= FLOAT32_GRAD_TOL, name


@requires_cuda
def test_cuda_non_default_stream(compiled):
    """The kernels run on the current stream: they see the inputs written there after a long
    sleep (a kernel on another stream would read them before the copy lands)."""
    shape = SHAPES[1]
    inputs = make_inputs(shape, dtype=torch.float32, device="cuda")
    grad_output = torch.randn(shape[0], shape[1], shape[2] * shape[3], device="cuda")
    value = torch.zeros_like(inputs[0])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(SLEEP_CYCLES)
        value.copy_(inputs[0])
        out, grads = compiled_with_grads(_replace(inputs, 0, value), grad_output)
    torch.cuda.current_stream().wait_stream(stream)
    ref_out, ref_grads = reference_with_grads(inputs, grad_output)
    assert_float32_close(out, grads, ref_out, ref_grads)


@requires_cuda
def test_cuda_graph_capture_forward_and_backward(compiled):
    """Forward and backward are captured in one CUDA graph (capture fails on a host sync) and a
    replay computes the results of new inputs copied into it."""
    shape = SHAPES[1]
    value, shapes, starts, locations, weights = make_inputs(shape, dtype=torch.float32, device="cuda")
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    grad_output = torch.zeros(shape[0], shape[1], shape[2] * shape[3], device="cuda")

    def step():
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], impl="compiled")
        return out, torch.autograd.grad(out, leaves, grad_output)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture, as torch.cuda.graph asks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, grads = step()

    new_inputs = make_inputs(shape, dtype=torch.float32, device="cuda", seed=1)
    new_grad_output = torch.randn(grad_output.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for leaf, new in zip(leaves, (new_inputs[0], new_inputs[3], new_inputs[4])):
            leaf.copy_(new)
        grad_output.copy_(new_grad_output)
    graph.replay()
    torch.cuda.synchronize()
    ref_out, ref_grads = reference_with_grads(new_inputs, new_grad_output)
    assert_float32_close(out, grads, ref_out, ref_grads)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_second_device(compiled):
    inputs = make_inputs(SHAPES[1], dtype=torch.float32, device="cuda:1")
    out = ms_deform_attn(*inputs, impl="compiled")
    assert out.device == torch.device("cuda:1")
    assert max_abs(out, ms_deform_attn_pytorch(*[t.cpu() for t in inputs])) <= 1e-5


def _replace(inputs, index, tensor):
    inputs = list(inputs)
    inputs[index] = tensor
    return inputs


@pytest.mark.parametrize(
    "make_bad, match",
    [
        (lambda x: _replace(x, 0, x[0][0]), "value must be"),
        (lambda x: _replace(x, 1, x[1].int()), "spatial_shapes must be int64"),
        (lambda x: _replace(x, 1, x[1][:, :1]), r"spatial_shapes must be \[L, 2\]"),
        (lambda x: _replace(x, 2, x[2][:2]), "level_start_index must have L=3"),
        (lambda x: _replace(x, 2, x[2].flip(0)), r"level_start_index\[0\]"),
        # a larger last level keeps level_start_index consistent but no longer adds up to S
        (lambda x: _replace(x, 1, x[1] + torch.tensor([[0, 0], [0, 0], [1, 0]])), r"sum\(H\*W\)"),
        (lambda x: _replace(x, 3, x[3].float()), "sampling_locations must have value's dtype"),
        (lambda x: _replace(x, 3, x[3][:, :, :1]), "sampling_locations must be"),
        (lambda x: _replace(x, 4, x[4][..., :1]), "attention_weights must be"),
        (lambda x: _replace(x, 4, x[4].float()), "attention_weights must have value's dtype"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_inputs_name_the_argument(compiled, make_bad, match):
    bad = make_bad(make_inputs(SHAPES[1]))
    with pytest.raises(RuntimeError, match=match):
        torch.ops.dinov3_m2f.ms_deform_attn_forward(*bad)


def test_bad_grad_output(compiled):
    inputs = make_inputs(SHAPES[1])
    with pytest.raises(RuntimeError, match="grad_output must be"):
        torch.ops.dinov3_m2f.ms_deform_attn_backward(*inputs, torch.zeros(1, 1, 1, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("index, name", [(3, "sampling_locations"), (4, "attention_weights")])
def test_half_value_with_float_argument_is_rejected(compiled, device, dtype, index, name):
    inputs = make_inputs(SHAPES[1], dtype=dtype, device=device)
    bad = _replace(inputs, index, inputs[index].float())
    with pytest.raises(RuntimeError, match=f"{name} must have value's dtype"):
        torch.ops.dinov3_m2f.ms_deform_attn_forward(*bad)
    grad_output = torch.zeros(2, 9, 24, dtype=dtype, device=device)
    with pytest.raises(RuntimeError, match=f"{name} must have value's dtype"):
        torch.ops.dinov3_m2f.ms_deform_attn_backward(*bad, grad_output)
    with pytest.raises(RuntimeError, match="grad_output must have value's dtype"):
        torch.ops.dinov3_m2f.ms_deform_attn_backward(*inputs, grad_output.float())


@requires_cuda
def test_cuda_device_mismatch(compiled):
    inputs = make_inputs(SHAPES[1], device="cuda")
    with pytest.raises(RuntimeError, match="sampling_locations is on cpu"):
        torch.ops.dinov3_m2f.ms_deform_attn_forward(*_replace(inputs, 3, inputs[3].cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_auto_takes_every_floating_dtype(compiled, device, dtype):
    inputs = make_inputs(SHAPES[1], dtype=dtype, device=device)
    assert torch.equal(ms_deform_attn(*inputs, impl="auto"), ms_deform_attn(*inputs, impl="compiled"))


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl must be one of"):
        ms_deform_attn(*make_inputs(SHAPES[0]), impl="triton")


@pytest.fixture
def missing_extension(monkeypatch):
    """Pretend the compiled extension failed to load."""
    monkeypatch.setattr(_extension, "_LOAD_ERROR", "ImportError: simulated missing build")
    monkeypatch.setattr(_extension, "_WARNED_MISSING", False)


def test_missing_extension_auto_warns_once_and_falls_back(missing_extension, caplog):
    inputs = make_inputs(SHAPES[1])
    with caplog.at_level(logging.WARNING, logger=_extension.__name__):
        first = ms_deform_attn(*inputs, impl="auto")
        second = ms_deform_attn(*inputs, impl="auto")
    warnings = [r for r in caplog.records if r.name == _extension.__name__]
    assert len(warnings) == 1
    assert "pip install --no-build-isolation -e ." in warnings[0].getMessage()
    ref = ms_deform_attn_pytorch(*inputs)
    assert torch.equal(first, ref) and torch.equal(second, ref)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_missing_extension_auto_falls_back_for_half_types(missing_extension, dtype):
    inputs = make_inputs(SHAPES[1], dtype=dtype)
    out = ms_deform_attn(*inputs, impl="auto")
    ref = ms_deform_attn_pytorch(*[t.double() if t.is_floating_point() else t for t in inputs])
    assert out.dtype == dtype
    # the reference sums in the half type (measured: 0.6x this tolerance; the compiled op 0.13x)
    assert max_abs(out, ref) <= half_tolerance(dtype, ref)


def test_missing_extension_compiled_raises_with_build_instructions(missing_extension):
    with pytest.raises(RuntimeError, match=r"pip install --no-build-isolation -e \."):
        ms_deform_attn(*make_inputs(SHAPES[0]), impl="compiled")


def test_loader_only_swallows_import_errors(monkeypatch):
    def broken_import(name):
        raise ValueError("a real bug inside the extension's import")

    monkeypatch.setattr(_extension.importlib, "import_module", broken_import)
    with pytest.raises(ValueError, match="real bug"):
        _extension._load()

    def missing_import(name):
        raise OSError("undefined symbol")

    monkeypatch.setattr(_extension.importlib, "import_module", missing_import)
    assert "undefined symbol" in _extension._load()


def test_package_imports_without_extension():
    """A fresh interpreter in which `dinov3_m2f._C` cannot be imported still imports the package."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class BlockExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "dinov3_m2f._C":
                    raise ImportError("blocked for the test")
                return None

        sys.meta_path.insert(0, BlockExtension())
        import dinov3_m2f, dinov3_m2f.layers
        from dinov3_m2f.layers import _extension
        assert not _extension.is_available()
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# Positional arguments of ms_deform_attn after ``value``.
OP_ARGUMENTS = ["spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]


@requires_cuda
@pytest.mark.parametrize("index, name", list(enumerate(OP_ARGUMENTS, start=1)))
@pytest.mark.parametrize("impl", ["compiled", "auto"])
def test_cuda_op_rejects_an_argument_on_another_device(index, name, impl):
    if not _extension.is_available():
        pytest.fail(f"dinov3_m2f._C is not built: {_extension._LOAD_ERROR}")
    inputs = list(make_inputs(SHAPES[1], dtype=torch.float32, device="cuda"))
    inputs[index] = inputs[index].cpu()
    with pytest.raises(RuntimeError, match=f"{name} is on cpu but value is on cuda"):
        ms_deform_attn(*inputs, impl=impl)


@requires_cuda
def test_cuda_op_rejects_value_on_cpu():
    if not _extension.is_available():
        pytest.fail(f"dinov3_m2f._C is not built: {_extension._LOAD_ERROR}")
    inputs = list(make_inputs(SHAPES[1], dtype=torch.float32, device="cuda"))
    inputs[0] = inputs[0].cpu()
    with pytest.raises(RuntimeError, match="is on cuda:0 but value is on cpu"):
        ms_deform_attn(*inputs, impl="compiled")

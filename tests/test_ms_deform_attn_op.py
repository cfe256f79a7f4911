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


@requires_cuda
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
def test_cuda_half_types(compiled, dtype, tol):
    """Half-precision I/O with float accumulation, against float64 on the rounded inputs."""
    shape = SHAPES[1]
    inputs = make_inputs(shape, dtype=dtype, device="cuda")
    grad_output = torch.randn(shape[0], shape[1], shape[2] * shape[3], device="cuda").to(dtype)
    out, grads = compiled_with_grads(inputs, grad_output)
    ref_out, ref_grads = reference_with_grads(inputs, grad_output)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert max_abs(out, ref_out) <= tol
    for name, grad, ref in zip(("value", "locations", "weights"), grads, ref_grads):
        scale = max(1.0, ref.abs().max().item())
        assert max_abs(grad, ref) <= tol * scale, name


@requires_cuda
def test_cuda_non_default_stream(compiled):
    shape = SHAPES[1]
    inputs = make_inputs(shape, dtype=torch.float32, device="cuda")
    grad_output = torch.randn(shape[0], shape[1], shape[2] * shape[3], device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out, grads = compiled_with_grads(inputs, grad_output)
    torch.cuda.current_stream().wait_stream(stream)
    ref_out, ref_grads = reference_with_grads(inputs, grad_output)
    assert max_abs(out, ref_out) <= 1e-5
    for grad, ref in zip(grads, ref_grads):
        assert max_abs(grad, ref) <= 1e-4


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


def test_cpu_rejects_half_types(compiled):
    inputs = [t.bfloat16() if t.is_floating_point() else t for t in make_inputs(SHAPES[0])]
    with pytest.raises(RuntimeError, match="BFloat16"):
        ms_deform_attn(*inputs, impl="compiled")


@requires_cuda
def test_cuda_device_mismatch(compiled):
    inputs = make_inputs(SHAPES[1], device="cuda")
    with pytest.raises(RuntimeError, match="sampling_locations is on cpu"):
        torch.ops.dinov3_m2f.ms_deform_attn_forward(*_replace(inputs, 3, inputs[3].cpu()))


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

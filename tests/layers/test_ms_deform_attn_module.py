"""Tests of the MSDeformAttn module (shapes, initialisation, masking, torch.compile)."""
import importlib
import math

import pytest
import torch

from dinov3_m2f.layers import MSDeformAttn, _extension
# the submodule (the package attribute of the same name is the function)
ms_deform_attn_module = importlib.import_module("dinov3_m2f.layers.ms_deform_attn")

LEVELS = [(6, 8), (3, 4), (2, 2)]  # (H, W), non-square


def level_tensors(levels=LEVELS):
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)  # [L, 2]
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])  # [L]
    return spatial_shapes, level_start_index, int(areas.sum())


def make_batch(d_model, *, batch=2, queries=7, levels=LEVELS, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index, num_values = level_tensors(levels)
    query = torch.randn(batch, queries, d_model, generator=gen, dtype=dtype)
    reference_points = torch.rand(batch, queries, len(levels), 2, generator=gen, dtype=dtype)
    input_flatten = torch.randn(batch, num_values, d_model, generator=gen, dtype=dtype)
    return query, reference_points, input_flatten, spatial_shapes, level_start_index


def randomize(module, seed=0):
    """Non-trivial offsets and attention weights (the init makes them constant)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return module


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_output_shape_and_value_ratio(ratio):
    module = MSDeformAttn(32, len(LEVELS), 4, 3, ratio=ratio, impl="pytorch")
    assert module.value_proj.out_features == int(32 * ratio)
    assert module.output_proj.in_features == int(32 * ratio)
    out = module(*make_batch(32))
    assert out.shape == (2, 7, 32)


def test_value_dim_must_divide_into_heads():
    with pytest.raises(ValueError, match="n_heads=16"):
        MSDeformAttn(48, 1, 16, 4, ratio=0.5)


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl must be one of"):
        MSDeformAttn(32, 1, 4, 4, impl="cuda")


def test_reference_points_shape_checked():
    module = MSDeformAttn(32, len(LEVELS), 4, 2, impl="pytorch")
    query, reference_points, *rest = make_batch(32)
    with pytest.raises(ValueError, match="reference_points"):
        module(query, reference_points[:, :, :1], *rest)


def test_initialisation():
    n_heads, n_levels, n_points = 8, 2, 3
    module = MSDeformAttn(64, n_levels, n_heads, n_points)
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    assert torch.count_nonzero(module.attention_weights.bias) == 0
    assert torch.count_nonzero(module.value_proj.bias) == 0
    assert torch.count_nonzero(module.output_proj.bias) == 0
    bound = math.sqrt(6.0 / (64 + 64))  # xavier_uniform
    assert module.value_proj.weight.abs().max() <= bound
    assert module.value_proj.weight.std() > bound / 3
    bias = module.sampling_offsets.bias.view(n_heads, n_levels, n_points, 2)
    # head h points in direction h * 45 degrees, scaled so the larger coordinate is 1; point k
    # sits k + 1 cells away, identically on every level
    torch.testing.assert_close(bias[0, 1, 2], torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(bias[2, 0, 1], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[5, 1, 0], torch.tensor([-1.0, -1.0]))
    assert torch.equal(bias[:, 0], bias[:, 1])


def test_offsets_are_normalised_by_level_width_and_height(monkeypatch):
    """Offsets are in cells of each level: location = reference + offset / (W, H)."""
    captured = {}

    def spy(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *, impl):
        captured["locations"] = sampling_locations
        return value.new_zeros(value.shape[0], sampling_locations.shape[1], value.shape[2] * value.shape[3])

    monkeypatch.setattr(ms_deform_attn_module, "ms_deform_attn", spy)
    module = MSDeformAttn(16, len(LEVELS), 2, 2, impl="pytorch")
    query, reference_points, *rest = make_batch(16)
    module(query, reference_points, *rest)
    bias = module.sampling_offsets.bias.view(2, len(LEVELS), 2, 2)  # [M, L, P, 2] in cells
    sizes_wh = torch.tensor([(w, h) for h, w in LEVELS], dtype=torch.float32)  # [L, 2]
    expected = reference_points[:, :, None, :, None, :] + (bias / sizes_wh[None, :, None, :])
    torch.testing.assert_close(captured["locations"], expected)


def test_padding_mask_zeroes_values():
    module = randomize(MSDeformAttn(16, len(LEVELS), 2, 4, impl="pytorch"))
    query, reference_points, input_flatten, shapes, starts = make_batch(16)
    mask = torch.zeros(input_flatten.shape[:2], dtype=torch.bool)
    mask[0, 5:40] = True
    mask[1, :] = True
    masked = module(query, reference_points, input_flatten, shapes, starts, mask)
    # whatever sits at padded tokens is ignored
    changed = input_flatten.masked_fill(mask[..., None], 1e3)
    torch.testing.assert_close(module(query, reference_points, changed, shapes, starts, mask), masked)
    # all-padding sample: only the output projection bias is left
    torch.testing.assert_close(masked[1], module.output_proj.bias.expand(7, 16))
    unmasked = module(query, reference_points, input_flatten, shapes, starts)
    assert not torch.allclose(masked[0], unmasked[0])


def test_compiled_and_pytorch_impls_agree():
    if not _extension.is_available():
        pytest.fail(f"dinov3_m2f._C is not built: {_extension._LOAD_ERROR}")
    reference = randomize(MSDeformAttn(24, len(LEVELS), 4, 3, ratio=0.5, impl="pytorch")).double()
    compiled = MSDeformAttn(24, len(LEVELS), 4, 3, ratio=0.5, impl="compiled").double()
    compiled.load_state_dict(reference.state_dict())
    inputs = make_batch(24, dtype=torch.float64)
    torch.testing.assert_close(compiled(*inputs), reference(*inputs), atol=1e-10, rtol=0)


def test_autocast_mixed_dtypes():
    """Under CPU autocast the value is bfloat16 while locations stay float32; the module
    promotes them to one dtype for the op."""
    module = randomize(MSDeformAttn(16, len(LEVELS), 2, 2))
    inputs = make_batch(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(*inputs)
    torch.testing.assert_close(out.float(), module(*inputs), atol=0.1, rtol=0.05)


def test_torch_compile_fullgraph_matches_eager():
    if not _extension.is_available():
        pytest.fail(f"dinov3_m2f._C is not built: {_extension._LOAD_ERROR}")
    torch._dynamo.reset()
    module = randomize(MSDeformAttn(16, len(LEVELS), 2, 2, impl="compiled"))
    query, *rest = make_batch(16)
    query.requires_grad_()
    eager = module(query, *rest)
    (eager_grad,) = torch.autograd.grad(eager.sum(), query)
    # aot_eager runs Dynamo, FakeTensor propagation and AOTAutograd (what the op's Python
    # registrations serve) without spending the test's time in Inductor's C++ compiler
    compiled_module = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled_module(query, *rest)
    (grad,) = torch.autograd.grad(out.sum(), query)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, eager_grad)

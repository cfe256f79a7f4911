"""DINOv3Adapter: shapes, input checks, frozen backbone, norm options, checkpointing."""
import pytest
import torch
from torch import nn

from dinov3_m2f.modeling.adapter import DINOv3Adapter
from dinov3_m2f.modeling.dinov3 import build_dinov3

EMBED_DIM = 64
DEPTH = 4
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _tiny_backbone() -> nn.Module:
    return build_dinov3(None, embed_dim=EMBED_DIM, depth=DEPTH, num_heads=2, patch_size=16)


def _tiny_adapter(**overrides) -> DINOv3Adapter:
    kwargs = dict(
        interaction_indexes=[0, 1, 2, 3],
        conv_inplane=16,
        deform_num_heads=4,
        drop_path_rate=0.1,
    )
    kwargs.update(overrides)
    return DINOv3Adapter(_tiny_backbone(), **kwargs)


def _image(batch: int = 2, height: int = 64, width: int = 96) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_output_shapes_non_square_batch2():
    torch.manual_seed(0)
    adapter = _tiny_adapter().eval()
    out = adapter(_image())
    assert adapter.out_channels == EMBED_DIM
    assert adapter.out_strides == STRIDES
    assert sorted(out) == sorted(STRIDES)
    for name, stride in STRIDES.items():
        assert out[name].shape == (2, EMBED_DIM, 64 // stride, 96 // stride), name
        assert out[name].dtype == torch.float32
        assert torch.isfinite(out[name]).all()


@pytest.mark.parametrize("size", [(48, 64), (64, 80)])
def test_size_not_divisible_by_32_raises(size):
    adapter = _tiny_adapter().eval()
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}"):
        adapter(_image(1, *size))


def test_gradients_reach_adapter_but_never_backbone():
    torch.manual_seed(0)
    adapter = _tiny_adapter().train()
    assert not adapter.backbone.training  # the frozen ViT keeps eval semantics
    out = adapter(_image())
    sum(o.square().mean() for o in out.values()).backward()
    for name, p in adapter.named_parameters():
        if name.startswith("backbone."):
            assert not p.requires_grad, name
            assert p.grad is None, name
        else:
            assert p.requires_grad, name
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for n, p in adapter.named_parameters() if "extractor" in n)


@pytest.mark.parametrize(
    "norm, norm_type",
    [
        ("BN", nn.BatchNorm2d),
        ("SyncBN", nn.SyncBatchNorm),
        ("GN", nn.GroupNorm),
        (lambda channels: nn.GroupNorm(8, channels), nn.GroupNorm),
    ],
)
def test_norm_options(norm, norm_type):
    torch.manual_seed(0)
    adapter = _tiny_adapter(norm=norm, conv_inplane=32).eval()
    for name in ("norm1", "norm2", "norm3", "norm4"):
        assert type(getattr(adapter, name)) is norm_type
    assert type(adapter.spm.stem[1]) is norm_type
    out = adapter(_image(1))
    assert out["res2"].shape == (1, EMBED_DIM, 16, 24)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="norm"):
        _tiny_adapter(norm="LN")
    with pytest.raises(ValueError, match="interaction_indexes"):
        _tiny_adapter(interaction_indexes=[0, 1, 2, DEPTH])


def test_extra_extractors_only_on_last_block():
    adapter = _tiny_adapter()
    assert [blk.extra_extractors is not None for blk in adapter.interactions] == [False, False, False, True]
    assert len(adapter.interactions[-1].extra_extractors) == 2
    assert all(blk.extra_extractors is None for blk in _tiny_adapter(use_extra_extractor=False).interactions)


def test_with_cp_matches_plain():
    torch.manual_seed(0)
    plain = _tiny_adapter(drop_path_rate=0.0, with_cp=False)
    ckpt = _tiny_adapter(drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    image = _image()

    for model in (plain, ckpt):
        model.eval()
    with torch.no_grad():
        ref, got = plain(image), ckpt(image)
    for name in STRIDES:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0)

    # training: checkpointing recomputes the extractors in backward; results and grads must agree
    grads = []
    for model in (plain, ckpt):
        model.train()
        model.zero_grad()
        out = model(image)
        sum(o.square().mean() for o in out.values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_vit_autocast_keeps_float32_outputs():
    torch.manual_seed(0)
    adapter = _tiny_adapter().eval()
    image = _image(1)
    with torch.no_grad():
        ref = adapter(image)
        adapter.backbone.autocast_dtype = torch.bfloat16  # the ViT's own autocast knob
        low = adapter(image)
    for name in STRIDES:
        assert low[name].dtype == torch.float32
        assert not torch.equal(low[name], ref[name])  # the backbone really ran in bf16
        torch.testing.assert_close(low[name], ref[name], rtol=0.1, atol=0.2)

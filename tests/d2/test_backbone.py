"""D2DINOv3Backbone: detectron2 Backbone contract, frozen ViT, seeded init, weights dtype, norm choice."""
import logging

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.layers import NaiveSyncBatchNorm, ShapeSpec  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from dinov3_m2f.d2.backbone import D2DINOv3Backbone, D2DINOv3ViTBackbone, dinov3_pyramid_shape  # noqa: E402
from dinov3_m2f.d2.backbone import resolve_norm  # noqa: E402
from dinov3_m2f.modeling.dinov3 import build_dinov3  # noqa: E402

EMBED_DIM = 32
TINY_VIT = dict(embed_dim=EMBED_DIM, depth=4, num_heads=2, patch_size=16)


def _tiny_backbone(**kwargs) -> D2DINOv3Backbone:
    args = dict(
        preset=None,
        vit_kwargs=TINY_VIT,
        interaction_indexes=[0, 1, 2, 3],
        init_seed=0,
        adapter_kwargs=dict(conv_inplane=8, deform_num_heads=2, n_points=2, drop_path_rate=0.0),
    )
    args.update(kwargs)
    return D2DINOv3Backbone(**args)


def test_output_shape():
    backbone = _tiny_backbone()
    expected = {
        "res2": ShapeSpec(channels=EMBED_DIM, stride=4),
        "res3": ShapeSpec(channels=EMBED_DIM, stride=8),
        "res4": ShapeSpec(channels=EMBED_DIM, stride=16),
        "res5": ShapeSpec(channels=EMBED_DIM, stride=32),
    }
    assert backbone.output_shape() == expected
    assert dinov3_pyramid_shape(channels=EMBED_DIM) == expected
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"size_divisibility": 32, "square_size": 0}


def test_forward_shapes_after_detectron2_padding():
    backbone = _tiny_backbone().eval()
    images = ImageList.from_tensors(
        [torch.randn(3, 70, 50), torch.randn(3, 40, 90)],
        backbone.size_divisibility,
        padding_constraints=backbone.padding_constraints,
    )
    assert tuple(images.tensor.shape[-2:]) == (96, 96)
    with torch.no_grad():
        features = backbone(images.tensor)
    for name, spec in backbone.output_shape().items():
        assert features[name].shape == (2, spec.channels, 96 // spec.stride, 96 // spec.stride)


def test_vit_frozen_and_stays_in_eval_mode():
    backbone = _tiny_backbone()
    backbone.train()
    assert not backbone.vit.training
    assert backbone.adapter.training
    assert not any(p.requires_grad for p in backbone.vit.parameters())
    assert all(p.requires_grad for p in backbone.adapter.spm.parameters())


def test_init_seed_reproduces_random_vit():
    first, second = _tiny_backbone(init_seed=3), _tiny_backbone(init_seed=3)
    other = _tiny_backbone(init_seed=4)
    w1 = first.vit.patch_embed.proj.weight
    assert torch.equal(w1, second.vit.patch_embed.proj.weight)
    assert not torch.equal(w1, other.vit.patch_embed.proj.weight)


@pytest.mark.parametrize("backbone_class", [D2DINOv3Backbone, D2DINOv3ViTBackbone])
def test_seeded_random_vit_has_the_values_of_a_seeded_build_dinov3(backbone_class):
    # trainable-only checkpoints of the synthetic configs rely on these exact values
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected = build_dinov3(None, **TINY_VIT).state_dict()
    if backbone_class is D2DINOv3Backbone:
        vit = _tiny_backbone(init_seed=7).vit
    else:
        rng_state = torch.random.get_rng_state()
        vit = D2DINOv3ViTBackbone(preset=None, vit_kwargs=TINY_VIT, init_seed=7).vit
        assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is left alone
    state = vit.state_dict()
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert value.dtype == torch.float32 and torch.equal(value, expected[key]), key


def test_random_vit_without_seed_warns_once(caplog):
    with caplog.at_level(logging.WARNING):
        _tiny_backbone(init_seed=None)
    warnings = [r for r in caplog.records if "no init_seed" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("vit_dtype", ["float32", "bfloat16"])
def test_weights_file_is_loaded_in_vit_dtype(tmp_path, vit_dtype):
    source = _tiny_backbone(init_seed=5)
    path = tmp_path / "vit.pth"
    torch.save(source.vit.state_dict(), path)
    loaded = _tiny_backbone(init_seed=None, weights=str(path), vit_dtype=vit_dtype)
    weight = loaded.vit.blocks[1].mlp.fc1.weight
    assert weight.dtype == getattr(torch, vit_dtype)
    assert torch.equal(weight, source.vit.blocks[1].mlp.fc1.weight.to(weight.dtype))
    assert loaded.vit.blocks[1].norm1.weight.dtype == torch.float32


def test_bf16_vit_weights_run_under_the_vits_autocast_and_keep_the_adapter_float32():
    backbone = _tiny_backbone(vit_dtype="bfloat16").eval()
    vit_linear = backbone.vit.blocks[0].attn.qkv.weight
    assert vit_linear.dtype == torch.bfloat16 and not vit_linear.requires_grad
    assert all(p.dtype == torch.float32 for p in backbone.adapter.spm.parameters())
    assert backbone.vit.autocast_dtype == torch.bfloat16
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert all(f.dtype == torch.float32 and torch.isfinite(f).all() for f in features.values())
    vit_only = D2DINOv3ViTBackbone(preset=None, vit_kwargs=TINY_VIT, init_seed=0, vit_dtype="bfloat16")
    assert vit_only.vit.patch_embed.proj.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="int8"):
        _tiny_backbone(vit_dtype="int8")


def test_norm_choice(monkeypatch):
    assert isinstance(_tiny_backbone(norm="auto").adapter.norm1, torch.nn.BatchNorm2d)
    # the names are the core's: detectron2-only names are refused
    with pytest.raises(ValueError, match="norm must be 'BN', 'SyncBN', 'GN'"):
        _tiny_backbone(norm="naiveSyncBN")
    # several processes without CUDA (gloo): detectron2's all-reduce BN, torch's needs CUDA
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_norm("auto") is NaiveSyncBatchNorm
    assert resolve_norm("BN") == "BN"
    naive = _tiny_backbone(norm="auto").adapter
    assert isinstance(naive.norm1, NaiveSyncBatchNorm)
    assert isinstance(naive.spm.stem[1], NaiveSyncBatchNorm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_norm("auto") == "SyncBN"


def test_missing_interaction_indexes_for_custom_vit():
    with pytest.raises(ValueError, match="interaction_indexes"):
        _tiny_backbone(interaction_indexes=None)

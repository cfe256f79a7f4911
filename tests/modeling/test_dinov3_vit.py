"""DINOv3 ViT: parity with the official outputs, API semantics, frozen behaviour, presets."""

import pytest
import torch
from torch import nn

from dinov3_m2f.modeling.dinov3 import (
    DINOV3_PRESETS,
    INTERACTION_INDEXES,
    NORMALIZATION,
    build_dinov3,
    get_normalization,
    kwargs_from_official_config,
)
from dinov3_m2f.modeling.dinov3.layers import swiglu_hidden_features
from helpers import PARITY_ATOL, load_vit_fixture


def build_from_fixture(fixture, **overrides):
    model = build_dinov3(None, **kwargs_from_official_config(fixture["config"]), **overrides)
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model


def max_abs_errors(model, fixture):
    """Max-abs difference of every reference output of a fixture, keyed by output name."""
    image, n = fixture["image"], fixture["n"]
    errors = {}
    outputs = model.get_intermediate_layers(image, n=n, return_class_token=True, norm=True)
    assert len(outputs) == len(fixture["intermediate_layers"])
    for (patch, cls), ref in zip(outputs, fixture["intermediate_layers"]):
        errors[f"intermediate_layers.index{ref['index']}.patch"] = (patch - ref["patch"]).abs().max().item()
        errors[f"intermediate_layers.index{ref['index']}.cls"] = (cls - ref["cls"]).abs().max().item()
    reshaped = model.get_intermediate_layers(image, n=n, reshape=True, return_class_token=True)[-1][0]
    assert reshaped.shape == fixture["intermediate_last_reshaped"].shape
    errors["intermediate_last_reshaped"] = (reshaped - fixture["intermediate_last_reshaped"]).abs().max().item()
    features = model.forward_features(image)
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_storage_tokens"):
        assert features[key].shape == fixture[key].shape, key
        errors[key] = (features[key] - fixture[key]).abs().max().item()
    return errors


@pytest.mark.parametrize("name", ["mlp", "swiglu"])
def test_parity_with_official_outputs(name):
    fixture = load_vit_fixture(name)
    model = build_from_fixture(fixture)
    errors = max_abs_errors(model, fixture)
    worst = max(errors.values())
    assert worst <= PARITY_ATOL, f"max abs errors: {errors}"


def test_parity_detects_a_wrong_bias_mask():
    # The k-bias mask changes outputs by ~0.07: ignoring it must break parity.
    fixture = load_vit_fixture("mlp")
    model = build_from_fixture(fixture)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.bias_mask.fill_(1.0)
    assert max(max_abs_errors(model, fixture).values()) > 10 * PARITY_ATOL


def test_state_dict_layout_matches_official():
    for name in ("mlp", "swiglu"):
        fixture = load_vit_fixture(name)
        model = build_dinov3(None, **kwargs_from_official_config(fixture["config"]))
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in fixture["state_dict"].items()}
        assert ours == theirs


def test_buffers_initialised_like_official():
    fixture = load_vit_fixture("mlp")
    model = build_dinov3(None, **kwargs_from_official_config(fixture["config"]))
    for block in model.blocks:
        torch.testing.assert_close(block.attn.qkv.bias_mask, fixture["state_dict"]["blocks.0.attn.qkv.bias_mask"])
    torch.testing.assert_close(model.rope_embed.periods, fixture["state_dict"]["rope_embed.periods"])
    assert "rope_embed.periods" in model.state_dict()


def test_swiglu_hidden_sizes_of_released_models():
    expected = {"vits16plus": 1536, "vitl16plus": 4096, "vith16plus": 5120, "vit7b16": 8192}
    for name, width in expected.items():
        preset = DINOV3_PRESETS[name]
        align = {"swiglu": 8, "swiglu64": 64}[preset["ffn_layer"]]
        nominal = int(preset["embed_dim"] * preset["ffn_ratio"])
        assert swiglu_hidden_features(nominal, align_to=align) == width, name
    assert swiglu_hidden_features(100, align_to=64) == 128  # int(66.67) = 66 -> 128


def test_presets_and_interaction_indexes():
    assert set(DINOV3_PRESETS) == set(INTERACTION_INDEXES)
    for name, indexes in INTERACTION_INDEXES.items():
        assert indexes[-1] == DINOV3_PRESETS[name]["depth"] - 1, name
    model = build_dinov3("vits16")
    assert (model.embed_dim, model.n_blocks, model.num_heads, model.n_storage_tokens) == (384, 12, 6, 4)
    assert model.blocks[0].mlp.fc1.out_features == 1536
    assert DINOV3_PRESETS["vit7b16"]["qkv_bias"] is False
    assert DINOV3_PRESETS["vit7b16"]["untie_global_and_local_cls_norm"] is True
    with pytest.raises(ValueError, match="vitl16plus"):
        build_dinov3("vit_large")


def test_normalization():
    assert get_normalization("SAT493M") == NORMALIZATION["sat493m"]
    assert get_normalization("lvd1689m")[0] == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match="imagenet.*lvd1689m, sat493m"):
        get_normalization("imagenet")


def test_official_config_rejects_unsupported_settings():
    config = dict(load_vit_fixture("mlp")["config"], pos_embed_rope_normalize_coords="max")
    with pytest.raises(ValueError, match="pos_embed_rope_normalize_coords"):
        kwargs_from_official_config(config)


def tiny_model(**overrides):
    torch.manual_seed(0)
    kwargs = dict(embed_dim=32, depth=3, num_heads=2, ffn_ratio=2.0, layerscale_init=0.5)
    kwargs.update(overrides)
    return build_dinov3(None, **kwargs)


def test_get_intermediate_layers_semantics():
    model = tiny_model()
    x = torch.randn(2, 3, 32, 48)
    last_two = model.get_intermediate_layers(x, n=2)
    explicit = model.get_intermediate_layers(x, n=[1, 2])
    for a, b in zip(last_two, explicit):
        torch.testing.assert_close(a, b)
    assert last_two[0].shape == (2, 6, 32)
    features = model.forward_features(x)
    patches, cls, storage = model.get_intermediate_layers(x, n=1, return_class_token=True, return_extra_tokens=True)[0]
    torch.testing.assert_close(patches, features["x_norm_patchtokens"])
    torch.testing.assert_close(cls, features["x_norm_clstoken"])
    torch.testing.assert_close(storage, features["x_storage_tokens"])
    (raw,) = model.get_intermediate_layers(x, n=[2], norm=False)
    torch.testing.assert_close(raw, features["x_prenorm"][:, 5:])
    (grid,) = model.get_intermediate_layers(x, n=[0], reshape=True)
    (flat,) = model.get_intermediate_layers(x, n=[0])
    assert grid.shape == (2, 32, 2, 3)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), flat)  # row-major token order


@pytest.mark.parametrize(
    "n, message",
    [(0, r"n=0 must be between 1 and .* \(3\)"), (4, "n=4"), ([3], r"\[3\] in n are out of range"), ([1, 1], "unique")],
)
def test_get_intermediate_layers_rejects_bad_n(n, message):
    with pytest.raises(ValueError, match=message):
        tiny_model().get_intermediate_layers(torch.randn(1, 3, 16, 16), n=n)


def test_image_size_not_divisible_by_patch_size():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"64x90 .*patch size 16"):
        model.forward_features(torch.randn(1, 3, 64, 90))
    with pytest.raises(ValueError, match=r"40x48 .*patch size 16"):
        model.get_intermediate_layers(torch.randn(1, 3, 40, 48), n=1)


def test_rope_depends_on_position():
    # Permuting the patch grid must change the output (RoPE makes the model position-aware).
    model = tiny_model()
    x = torch.randn(1, 3, 32, 32)
    out = model.forward_features(x)["x_norm_patchtokens"]
    flipped = model.forward_features(x.flip(-1))["x_norm_patchtokens"].reshape(1, 2, 2, -1).flip(2).reshape(1, 4, -1)
    assert (out - flipped).abs().max() > 1e-3


class _Downstream(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, 1)

    def forward(self, x):
        return self.head(self.backbone.get_intermediate_layers(x, n=[0, 2])[-1]).sum()


def test_frozen_semantics():
    model = tiny_model()
    assert all(not p.requires_grad for p in model.parameters())
    parent = _Downstream(model)
    parent.train()
    assert parent.training and parent.head.training
    assert not any(m.training for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    train_out = model.forward_features(x)["x_norm_patchtokens"]
    parent.eval()
    torch.testing.assert_close(model.forward_features(x)["x_norm_patchtokens"], train_out, rtol=0, atol=0)
    parent.train()
    assert not train_out.requires_grad
    parent(x).backward()
    assert parent.head.weight.grad is not None
    assert all(p.grad is None for p in model.parameters())


def test_unfrozen_model_trains():
    model = tiny_model(frozen=False)
    model.train()
    assert model.training
    model.forward_features(torch.randn(1, 3, 16, 16))["x_norm_clstoken"].sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_bf16_autocast_on_cpu():
    fixture = load_vit_fixture("mlp")
    reference = build_from_fixture(fixture).forward_features(fixture["image"])["x_norm_patchtokens"]
    model = build_from_fixture(fixture, autocast_dtype=torch.bfloat16)
    out = model.forward_features(fixture["image"])["x_norm_patchtokens"]
    diff = (out.float() - reference).abs().max().item()
    assert 0 < diff < 0.5, diff  # autocast was applied, and bf16 stays close to fp32

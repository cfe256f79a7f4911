"""DINOv3 ViT checkpoint loading: Meta .pth, safetensors, Hugging Face directories, errors."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from dinov3_m2f.modeling.dinov3 import build_dinov3, kwargs_from_official_config
from dinov3_m2f.weights import convert_to_hf_state_dict, hf_config_from_model, load_dinov3_weights
from helpers import PARITY_ATOL, load_vit_fixture, write_hf_directory


def empty_model(fixture, **overrides):
    """A model shaped like the fixture, with random (not the fixture's) weights."""
    torch.manual_seed(123)
    return build_dinov3(None, **{**kwargs_from_official_config(fixture["config"]), **overrides})


def assert_matches_reference(model, fixture):
    features = model.forward_features(fixture["image"])
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_storage_tokens"):
        err = (features[key] - fixture[key]).abs().max().item()
        assert err <= PARITY_ATOL, (key, err)
    outputs = model.get_intermediate_layers(fixture["image"], n=fixture["n"], return_class_token=True)
    for (patch, cls), ref in zip(outputs, fixture["intermediate_layers"]):
        assert (patch - ref["patch"]).abs().max().item() <= PARITY_ATOL
        assert (cls - ref["cls"]).abs().max().item() <= PARITY_ATOL


def cloned(state_dict):
    return {k: v.clone() for k, v in state_dict.items()}


def save_modified_mlp_state_dict(path, modify):
    """Save the "mlp" fixture's state dict, changed in place by ``modify(sd)``, to ``path``.

    Returns the fixture (for :func:`empty_model`).
    """
    fixture = load_vit_fixture("mlp")
    sd = cloned(fixture["state_dict"])
    modify(sd)
    torch.save(sd, path)
    return fixture


@pytest.mark.parametrize("wrapper", ["raw", "model", "teacher_backbone"])
def test_meta_pth_formats(tmp_path, wrapper):
    fixture = load_vit_fixture("mlp")
    sd = cloned(fixture["state_dict"])
    if wrapper == "model":
        payload = {"model": sd, "iteration": torch.tensor(3)}
    elif wrapper == "teacher_backbone":
        head = {"dino_head.mlp.0.weight": torch.zeros(2, 2)}
        payload = {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **head}}
    else:
        payload = sd
    path = tmp_path / "weights.pth"
    torch.save(payload, path)
    model = empty_model(fixture)
    load_dinov3_weights(model, path)
    assert_matches_reference(model, fixture)
    assert all(not p.requires_grad for p in model.parameters())


def test_meta_safetensors(tmp_path):
    fixture = load_vit_fixture("swiglu")
    path = tmp_path / "weights.safetensors"
    save_file(cloned(fixture["state_dict"]), str(path))
    model = empty_model(fixture)
    load_dinov3_weights(model, path)
    assert_matches_reference(model, fixture)


@pytest.mark.parametrize("name", ["mlp", "swiglu"])
def test_hf_single_file_and_sharded_directory(tmp_path, name):
    fixture = load_vit_fixture(name)
    reference_model = empty_model(fixture)
    reference_model.load_state_dict(fixture["state_dict"])
    hf_sd = convert_to_hf_state_dict(fixture["state_dict"])
    assert not any(k.endswith("k_proj.bias") for k in hf_sd)

    single = tmp_path / "model_hf.safetensors"
    save_file(hf_sd, str(single))
    model = empty_model(fixture)
    load_dinov3_weights(model, single)
    assert_matches_reference(model, fixture)

    # Sharded directory in the transformers-5 module naming ("model.layer.i").
    shard_dir = write_hf_directory(
        tmp_path / "hf_dir", fixture["state_dict"], config=hf_config_from_model(reference_model), num_shards=2
    )
    model = empty_model(fixture)
    load_dinov3_weights(model, shard_dir)
    x = fixture["image"]
    torch.testing.assert_close(
        model.forward_features(x)["x_norm_patchtokens"], reference_model.forward_features(x)["x_norm_patchtokens"]
    )
    assert_matches_reference(model, fixture)


def test_a_shard_index_pointing_outside_the_model_folder_is_refused(tmp_path):
    fixture = load_vit_fixture("mlp")
    reference_model = empty_model(fixture)
    shard_dir = write_hf_directory(tmp_path / "hf_dir", fixture["state_dict"],
                                   config=hf_config_from_model(reference_model), num_shards=2)
    index_path = os.path.join(shard_dir, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    for outside in ("../elsewhere.safetensors", "/tmp/elsewhere.safetensors", "sub/../../x.safetensors"):
        key = next(iter(index["weight_map"]))
        with open(index_path, "w") as f:
            json.dump(dict(index, weight_map=dict(index["weight_map"], **{key: outside})), f)
        with pytest.raises(ValueError, match=r"index.json.*outside the model folder.*" + re.escape(outside)):
            load_dinov3_weights(empty_model(fixture), shard_dir)


@pytest.mark.parametrize("name", ["mlp", "swiglu"])
def test_matches_transformers_dinov3(tmp_path, name):
    transformers = pytest.importorskip("transformers")
    fixture = load_vit_fixture(name)
    ours = empty_model(fixture)
    ours.load_state_dict(fixture["state_dict"])
    config = {k: v for k, v in hf_config_from_model(ours).items() if k not in ("model_type", "architectures")}
    hf_model = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**config)).eval()
    hf_model.load_state_dict(convert_to_hf_state_dict(fixture["state_dict"], layer_prefix="model.layer."), strict=True)
    with torch.no_grad():
        hf_out = hf_model(fixture["image"], output_hidden_states=True)
        # hidden_states[0] is the embedding output; [i + 1] the (pre-norm) output of block i.
        hf_layers = [hf_model.norm(h) for h in hf_out.hidden_states[1:]]
    assert len(hf_layers) == ours.n_blocks
    outputs = ours.get_intermediate_layers(fixture["image"], n=ours.n_blocks, return_class_token=True)
    num_prefix = 1 + ours.n_storage_tokens
    for (patch, cls), hf_layer in zip(outputs, hf_layers):
        assert (patch - hf_layer[:, num_prefix:]).abs().max().item() <= PARITY_ATOL
        assert (cls - hf_layer[:, 0]).abs().max().item() <= PARITY_ATOL

    # A directory written by transformers itself loads into our model.
    hf_model.save_pretrained(str(tmp_path / "saved"))
    model = empty_model(fixture)
    load_dinov3_weights(model, tmp_path / "saved")
    assert_matches_reference(model, fixture)


def test_local_cls_norm_is_optional_both_ways(tmp_path):
    swiglu = load_vit_fixture("swiglu")  # has local_cls_norm
    path = tmp_path / "untied.pth"
    torch.save(swiglu["state_dict"], path)
    model = empty_model(swiglu, untie_global_and_local_cls_norm=False)
    load_dinov3_weights(model, path)
    assert_matches_reference(model, swiglu)

    mlp = load_vit_fixture("mlp")  # has no local_cls_norm
    path = tmp_path / "tied.pth"
    torch.save(mlp["state_dict"], path)
    model = empty_model(mlp, untie_global_and_local_cls_norm=True)
    load_dinov3_weights(model, path)
    assert_matches_reference(model, mlp)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    def drop_and_add_keys(sd):
        del sd["blocks.3.mlp.fc2.weight"]
        sd["blocks.0.attn.extra.weight"] = torch.zeros(1)

    path = tmp_path / "broken.pth"
    fixture = save_modified_mlp_state_dict(path, drop_and_add_keys)
    with pytest.raises(ValueError, match=r"broken\.pth.*missing keys \(1\): blocks\.3\.mlp\.fc2\.weight.*unexpected"):
        load_dinov3_weights(empty_model(fixture), path)


def test_meta_checkpoint_without_rope_periods_is_rejected(tmp_path):
    path = tmp_path / "no_periods.pth"
    fixture = save_modified_mlp_state_dict(path, lambda sd: sd.pop("rope_embed.periods"))
    with pytest.raises(ValueError, match=r"no_periods\.pth.*rope_embed\.periods"):
        load_dinov3_weights(empty_model(fixture), path)


def test_nan_bias_mask_is_rejected(tmp_path):
    path = tmp_path / "nan_mask.pth"
    fixture = save_modified_mlp_state_dict(path, lambda sd: sd["blocks.2.attn.qkv.bias_mask"].fill_(float("nan")))
    with pytest.raises(ValueError, match=r"nan_mask\.pth.*blocks\.2\.attn\.qkv\.bias_mask"):
        load_dinov3_weights(empty_model(fixture), path)


def test_size_mismatch_names_both_sizes(tmp_path):
    fixture = load_vit_fixture("mlp")
    path = tmp_path / "vit_dim128.pth"
    torch.save(fixture["state_dict"], path)
    small = build_dinov3("vits16", embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(ValueError, match=r"vit_dim128\.pth.*embed_dim=128, depth=6.*model has embed_dim=64, depth=2"):
        load_dinov3_weights(small, path)
    # Same width and depth but a different FFN: shapes are reported per key.
    swiglu_model = empty_model(fixture, ffn_layer="swiglu")
    with pytest.raises(ValueError, match=r"vit_dim128\.pth.*missing keys.*mlp\.w1"):
        load_dinov3_weights(swiglu_model, path)


def test_wrong_format_and_truncated_files(tmp_path):
    fixture = load_vit_fixture("mlp")
    model = empty_model(fixture)
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pth"):
        load_dinov3_weights(model, text)

    good = tmp_path / "good.pth"
    torch.save(fixture["state_dict"], good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth"):
        load_dinov3_weights(model, truncated)

    safetensors_file = tmp_path / "good.safetensors"
    save_file(cloned(fixture["state_dict"]), str(safetensors_file))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(safetensors_file.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        load_dinov3_weights(model, cut)

    not_tensors = tmp_path / "config_only.pth"
    torch.save({"epoch": 3, "lr": 0.1}, not_tensors)
    with pytest.raises(ValueError, match=r"config_only\.pth.*not a DINOv3"):
        load_dinov3_weights(model, not_tensors)

    empty_dir = tmp_path / "empty_hf"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match=r"empty_hf.*model\.safetensors"):
        load_dinov3_weights(model, empty_dir)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        load_dinov3_weights(model, tmp_path / "absent.pth")


def _hf_dir_with_config(tmp_path, fixture, **changes):
    """HF directory of the fixture whose config.json has ``changes`` (None deletes a field)."""
    config = hf_config_from_model(empty_model(fixture))
    for field, value in changes.items():
        if value is None:
            del config[field]
        else:
            config[field] = value
    return write_hf_directory(tmp_path / "hf", fixture["state_dict"], config=config)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("layer_norm_eps", 1e-6, r"layer_norm_eps: 1e-06 in config\.json vs 1e-05 in the model"),
        ("hidden_act", "gelu_pytorch_tanh", r"hidden_act: 'gelu_pytorch_tanh' in config\.json vs 'gelu' in the model"),
        ("key_bias", True, r"key_bias: True in config\.json vs False in the model"),
        ("rope_theta", 10000.0, r"rope_theta: 10000\.0 in config\.json vs 100\.0 in the model"),
        ("num_register_tokens", 0, r"num_register_tokens: 0 in config\.json vs 4 in the model"),
        ("use_gated_mlp", True, r"use_gated_mlp: True in config\.json vs False"),
        ("mlp_bias", False, r"mlp_bias: False in config\.json vs True"),
        ("model_type", "dinov2", r"model_type: 'dinov2' in config\.json vs 'dinov3_vit'"),
    ],
)
def test_hf_config_mismatch_names_the_field(tmp_path, field, value, message):
    fixture = load_vit_fixture("mlp")
    directory = _hf_dir_with_config(tmp_path, fixture, **{field: value})
    with pytest.raises(ValueError, match=r"hf[/\\]config\.json.*" + message):
        load_dinov3_weights(empty_model(fixture), directory)


def test_hf_config_lists_every_mismatch_and_fills_absent_fields_with_transformers_defaults(tmp_path):
    fixture = load_vit_fixture("mlp")
    directory = _hf_dir_with_config(tmp_path, fixture, layer_norm_eps=1e-6, hidden_act="silu", hidden_size=None)
    with pytest.raises(ValueError) as error:
        load_dinov3_weights(empty_model(fixture), directory)
    text = str(error.value)
    assert "layer_norm_eps: 1e-06" in text and "hidden_act: 'silu'" in text
    # A field left out of the file means transformers' default (384), not "anything goes".
    assert "hidden_size: 384 (transformers' default: not in the file) in config.json vs 128 in the model" in text


def test_hf_config_ignores_fields_that_do_not_change_features(tmp_path):
    fixture = load_vit_fixture("swiglu")
    directory = _hf_dir_with_config(
        tmp_path,
        fixture,
        drop_path_rate=0.4,
        image_size=512,
        layerscale_value=1.0,
        pos_embed_jitter=1.5,
        attention_dropout=0.1,
        patch_size=[16, 16],
        hidden_act="swish",
        dtype="bfloat16",
    )
    model = empty_model(fixture)
    load_dinov3_weights(model, directory)
    assert_matches_reference(model, fixture)


def test_hf_config_of_a_model_without_layerscale_is_rejected(tmp_path):
    fixture = load_vit_fixture("mlp")
    directory = _hf_dir_with_config(tmp_path, fixture)
    with pytest.raises(ValueError, match=r"LayerScale: always present in DINOv3ViTModel vs none in the model"):
        load_dinov3_weights(empty_model(fixture, layerscale_init=None), directory)

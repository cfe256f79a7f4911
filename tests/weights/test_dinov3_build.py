"""build_frozen_dinov3: meta-device loading of every checkpoint format, strict checks, stored dtypes,
bf16 weights under autocast, random-init reproducibility, and the release of mapped file pages."""
import mmap
import re
import sys

import pytest
import torch
from safetensors.torch import save_file

from dinov3_m2f.modeling.dinov3 import build_dinov3, kwargs_from_official_config
from dinov3_m2f.weights import build_frozen_dinov3, convert_to_hf_state_dict, hf_config_from_model
from dinov3_m2f.weights.dinov3 import _PageReleaser
from dinov3_m2f.modeling.dinov3.rope import compute_rope_periods
from helpers import load_vit_fixture, write_hf_directory

FORMATS = ["pth", "pth_wrapped", "pth_legacy", "safetensors", "hf_safetensors", "hf_directory", "hf_sharded"]
HF_FORMATS = {"hf_safetensors", "hf_directory", "hf_sharded"}
# Parameters of the Linear layers and the patch embedding: the tensors stored in the chosen dtype.
LOW_PRECISION_KEY = re.compile(
    r"(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2|w1|w2|w3))|patch_embed\.proj)\.(weight|bias)"
)
# torch.testing's default tolerances for the dtype (bf16: rtol 1.6e-2, fp16: rtol 1e-3; atol 1e-5).
LOW_PRECISION_TOLERANCES = {torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5), torch.float16: dict(rtol=1e-3, atol=1e-5)}


def fixture_kwargs(fixture):
    return kwargs_from_official_config(fixture["config"])


def eager_reference(fixture):
    """The ViT built eagerly and filled with torch's own strict ``load_state_dict``."""
    model = build_dinov3(None, **fixture_kwargs(fixture))
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model


def write_checkpoint(tmp_path, fixture, fmt):
    """Write the fixture's weights in format ``fmt`` and return the path to load."""
    sd = {k: v.clone() for k, v in fixture["state_dict"].items()}
    if fmt == "pth":
        path = tmp_path / "weights.pth"
        torch.save(sd, path)
    elif fmt == "pth_wrapped":
        path = tmp_path / "train_state.pth"
        torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "iteration": torch.tensor(7)}, path)
    elif fmt == "pth_legacy":  # not a zip archive: cannot be mapped, is read whole
        path = tmp_path / "legacy.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif fmt == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file(sd, str(path))
    elif fmt == "hf_safetensors":
        path = tmp_path / "hf_named.safetensors"
        save_file(convert_to_hf_state_dict(sd), str(path))
    else:
        config = hf_config_from_model(build_dinov3(None, **fixture_kwargs(fixture)))
        path = write_hf_directory(tmp_path / fmt, sd, config=config, num_shards=3 if fmt == "hf_sharded" else 1)
    return path


def assert_fully_materialised(model, device="cpu"):
    tensors = model.state_dict()
    assert not [k for k, v in tensors.items() if v.is_meta]
    assert {v.device.type for v in tensors.values()} == {device}
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["mlp", "swiglu"])
def test_meta_device_load_equals_eager_load_in_fp32(tmp_path, name, fmt):
    fixture = load_vit_fixture(name)
    path = write_checkpoint(tmp_path, fixture, fmt)
    model = build_frozen_dinov3(None, weights=path, **fixture_kwargs(fixture))
    assert_fully_materialised(model)
    reference = eager_reference(fixture)
    expected = reference.state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in loaded.items():
        assert value.dtype == torch.float32, key
        if fmt in HF_FORMATS and key == "rope_embed.periods":
            # HF files carry no periods: computed from rope_theta (the fixture's are the official fp32 ones).
            torch.testing.assert_close(value, expected[key])
        elif fmt in HF_FORMATS and key.endswith("attn.qkv.bias"):
            # HF files drop the k bias (masked to zero by the model anyway): its third is zero.
            q_bias, k_bias, v_bias = expected[key].chunk(3)
            assert torch.equal(value, torch.cat([q_bias, torch.zeros_like(k_bias), v_bias])), key
        elif fmt in HF_FORMATS and key == "local_cls_norm.weight":
            assert torch.equal(value, torch.ones_like(value))  # HF drops it; the model keeps its initial value
        elif fmt in HF_FORMATS and key == "local_cls_norm.bias":
            assert torch.equal(value, torch.zeros_like(value))
        else:
            assert torch.equal(value, expected[key]), key
    image = fixture["image"]
    ours = model.get_intermediate_layers(image, n=fixture["n"], return_class_token=True)
    theirs = reference.get_intermediate_layers(image, n=fixture["n"], return_class_token=True)
    for (patch, cls), (ref_patch, ref_cls) in zip(ours, theirs):
        if fmt in HF_FORMATS:
            torch.testing.assert_close(patch, ref_patch)
            torch.testing.assert_close(cls, ref_cls)
        else:
            assert torch.equal(patch, ref_patch) and torch.equal(cls, ref_cls)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["pth", "hf_sharded"])
def test_stored_dtype_of_every_tensor(tmp_path, fmt, dtype):
    fixture = load_vit_fixture("mlp")
    model = build_frozen_dinov3(None, weights=write_checkpoint(tmp_path, fixture, fmt), dtype=dtype,
                                **fixture_kwargs(fixture))
    assert_fully_materialised(model)
    for key, value in model.state_dict().items():
        assert value.dtype == (dtype if LOW_PRECISION_KEY.fullmatch(key) else torch.float32), key
    # Buffers, norms, LayerScale and tokens stay float32 whatever the dtype.
    for key in ("rope_embed.periods", "blocks.0.attn.qkv.bias_mask", "blocks.0.norm1.weight", "blocks.0.ls1.gamma",
                "cls_token", "storage_tokens"):
        assert model.state_dict()[key].dtype == torch.float32
    assert model.autocast_dtype == (None if dtype == torch.float32 else dtype)
    # Values are the checkpoint's, rounded to the dtype.
    weight = model.blocks[1].mlp.fc1.weight
    assert torch.equal(weight, fixture["state_dict"]["blocks.1.mlp.fc1.weight"].to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["mlp", "swiglu"])
def test_low_precision_weights_give_the_features_of_fp32_weights_under_autocast(tmp_path, name, dtype):
    fixture = load_vit_fixture(name)
    path = write_checkpoint(tmp_path, fixture, "pth")
    kwargs = fixture_kwargs(fixture)
    fp32_weights = build_frozen_dinov3(None, weights=path, autocast_dtype=dtype, **kwargs)
    low_weights = build_frozen_dinov3(None, weights=path, dtype=dtype, **kwargs)
    assert fp32_weights.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert low_weights.blocks[0].attn.qkv.weight.dtype == dtype
    image = fixture["image"]
    ours = low_weights.get_intermediate_layers(image, n=fixture["n"], return_class_token=True)
    theirs = fp32_weights.get_intermediate_layers(image, n=fixture["n"], return_class_token=True)
    for (patch, cls), (ref_patch, ref_cls) in zip(ours, theirs):
        torch.testing.assert_close(patch.float(), ref_patch.float(), **LOW_PRECISION_TOLERANCES[dtype])
        torch.testing.assert_close(cls.float(), ref_cls.float(), **LOW_PRECISION_TOLERANCES[dtype])
    features = low_weights.forward_features(image)["x_norm_patchtokens"].float()
    reference = fp32_weights.forward_features(image)["x_norm_patchtokens"].float()
    torch.testing.assert_close(features, reference, **LOW_PRECISION_TOLERANCES[dtype])
    # The low-precision run really is low precision: it differs from float32 without autocast.
    exact = eager_reference(fixture).forward_features(image)["x_norm_patchtokens"]
    assert (features - exact).abs().max() > 0


def test_strict_key_errors_on_the_meta_path_name_file_and_keys(tmp_path):
    fixture = load_vit_fixture("mlp")
    kwargs = fixture_kwargs(fixture)
    sd = {k: v.clone() for k, v in fixture["state_dict"].items()}
    del sd["blocks.3.mlp.fc2.weight"]
    sd["blocks.0.attn.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(sd, broken)
    with pytest.raises(
        ValueError,
        match=r"broken\.pth.*missing keys \(1\): blocks\.3\.mlp\.fc2\.weight; "
        r"unexpected keys \(1\): blocks\.0\.attn\.extra\.weight",
    ):
        build_frozen_dinov3(None, weights=broken, dtype="bf16", **kwargs)

    good = write_checkpoint(tmp_path, fixture, "safetensors")
    with pytest.raises(ValueError, match=r"weights\.safetensors.*shape mismatches: .*mlp\.fc1\.weight: checkpoint "
                                         r"\(512, 128\) vs model \(256, 128\)"):
        build_frozen_dinov3(None, weights=good, **{**kwargs, "ffn_ratio": 2.0})
    with pytest.raises(ValueError, match=r"weights\.safetensors.*embed_dim=128, depth=6.*embed_dim=128, depth=5"):
        build_frozen_dinov3(None, weights=good, **{**kwargs, "depth": 5})

    # A Hugging Face file missing one projection of a fused qkv tensor; only the k bias may be
    # absent (HF drops it), so a missing q bias is an error too.
    for dropped, message in (
        ("layer.2.attention.v_proj.weight", r"blocks\.2\.attn\.qkv\.weight.*'q_proj'.*'k_proj'"),
        ("layer.1.attention.q_proj.bias", r"blocks\.1\.attn\.qkv\.bias.*'v_proj'"),
    ):
        hf_sd = convert_to_hf_state_dict(fixture["state_dict"])
        del hf_sd[dropped]
        path = tmp_path / f"without_{dropped}.safetensors"
        save_file(hf_sd, str(path))
        with pytest.raises(ValueError, match=re.escape(path.name) + ".*" + message):
            build_frozen_dinov3(None, weights=path, **kwargs)


def test_absent_optional_and_derived_tensors_get_their_initial_values(tmp_path):
    fixture = load_vit_fixture("mlp")
    sd = {k: v.clone() for k, v in fixture["state_dict"].items()}
    for key in [k for k in sd if k.endswith("bias_mask")] + ["mask_token"]:
        del sd[key]
    path = tmp_path / "no_masks.pth"
    torch.save(sd, path)
    kwargs = {**fixture_kwargs(fixture), "untie_global_and_local_cls_norm": True}
    model = build_frozen_dinov3(None, weights=path, **kwargs)
    assert_fully_materialised(model)
    mask = model.blocks[4].attn.qkv.bias_mask
    assert mask.tolist() == [1.0] * 128 + [0.0] * 128 + [1.0] * 128
    assert torch.equal(model.mask_token, torch.zeros(1, 128))
    assert torch.equal(model.local_cls_norm.weight, torch.ones(128))
    assert torch.equal(model.local_cls_norm.bias, torch.zeros(128))
    assert torch.equal(model.rope_embed.periods, fixture["state_dict"]["rope_embed.periods"])

    # Hugging Face files: RoPE periods computed from the model's (= config.json's) base, in float32.
    hf_model = build_frozen_dinov3(None, weights=write_checkpoint(tmp_path, fixture, "hf_sharded"), dtype="bf16",
                                   **fixture_kwargs(fixture))
    assert hf_model.rope_embed.periods.dtype == torch.float32
    assert torch.equal(hf_model.rope_embed.periods, compute_rope_periods(head_dim=32, base=100.0))
    k_bias = hf_model.blocks[0].attn.qkv.bias.chunk(3)[1]
    assert torch.equal(k_bias, torch.zeros_like(k_bias))  # the absent k third is zero, not uninitialised


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_init_values_are_unchanged(dtype):
    kwargs = dict(embed_dim=64, depth=3, num_heads=2, ffn_layer="swiglu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        expected = build_dinov3(None, **kwargs).state_dict()
    state = torch.random.get_rng_state()
    model = build_frozen_dinov3(None, init_seed=11, dtype=dtype, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)  # the seeded init leaves the global RNG alone
    assert_fully_materialised(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key].to(value.dtype)), key
        assert value.dtype == (dtype if LOW_PRECISION_KEY.fullmatch(key) else torch.float32), key

    # Without a seed: the global RNG, as build_dinov3 uses it.
    torch.manual_seed(5)
    unseeded = build_frozen_dinov3(None, **kwargs).state_dict()
    torch.manual_seed(5)
    for key, value in build_dinov3(None, **kwargs).state_dict().items():
        assert torch.equal(unseeded[key], value), key


def test_bad_arguments_are_named():
    kwargs = dict(embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(ValueError, match=r"dtype='int8'.*bf16"):
        build_frozen_dinov3(None, dtype="int8", **kwargs)
    with pytest.raises(ValueError, match=r"dtype=torch\.float64"):
        build_frozen_dinov3(None, dtype=torch.float64, **kwargs)
    with pytest.raises(ValueError, match="frozen=False"):
        build_frozen_dinov3(None, frozen=False, **kwargs)
    with pytest.raises(ValueError, match=r"autocast_dtype=None.*bfloat16"):
        build_frozen_dinov3(None, dtype="bfloat16", autocast_dtype=None, **kwargs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")
def test_page_release_drops_only_the_files_pages_and_keeps_the_data(tmp_path):
    pages = 64
    values = torch.arange(pages * mmap.PAGESIZE // 4, dtype=torch.float32)
    path = tmp_path / "big.pth"
    torch.save({"w": values}, path)
    mapped = torch.load(path, mmap=True, weights_only=True)["w"]

    def resident_kib():
        """Resident size of the mapping of ``path`` (kB, from /proc/self/smaps)."""
        total, inside = 0, False
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    inside = line.rstrip("\n").endswith(str(path))
                elif inside and line.startswith("Rss:"):
                    total += int(line.split()[1])
        return total

    assert torch.equal(mapped, values)  # touches every page
    assert resident_kib() >= pages * mmap.PAGESIZE // 1024
    release = _PageReleaser(str(path))
    release(mapped)
    assert resident_kib() < pages * mmap.PAGESIZE // 1024 // 4
    assert torch.equal(mapped, values)  # re-read from the file
    anonymous = values.clone()
    release(anonymous)  # not the file's memory: left alone
    assert torch.equal(anonymous, values)

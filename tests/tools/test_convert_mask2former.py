"""Mask2Former model-zoo checkpoints -> our head (tools/convert_weights.py --from mask2former) and
the restricted unpickler that reads their .pkl files.

The original checkpoints are built here from the module names of the public Mask2Former code
(MSDeformAttnPixelDecoder, MultiScaleMaskedTransformerDecoder under ``sem_seg_head.``), with
random weights and shapes computed from the hyper-parameters, independently of the converter.
"""
import collections
import logging
import os
import pickle

import numpy as np
import pytest
import torch

from dinov3_m2f.modeling import Mask2FormerHead
from dinov3_m2f.modeling.segmentor import TINY_HEAD, TINY_NUM_CLASSES, TINY_VIT
from dinov3_m2f.weights.mask2former import (
    SKIP_BACKBONE_INPUT,
    SKIP_OUTSIDE_HEAD,
    convert_mask2former_state_dict,
)
from dinov3_m2f.weights.files import safe_numpy_pickle_load
from helpers import CreatesFileWhenUnpickled, load_init_checkpoint, load_tool, write_code_executing_checkpoint

from helpers import REPO  # noqa: E402
SYNTHETIC_CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")

# The head of configs/synthetic/m2f_tiny_synthetic.py, on its ViT.
HEAD = dict(num_classes=TINY_NUM_CLASSES, **TINY_HEAD)
VIT_CHANNELS = TINY_VIT["embed_dim"]
# The original backbone: Swin-T channels at strides 4, 8, 16, 32 (res2..res5).
SWIN_T_CHANNELS = (96, 192, 384, 768)
LEVELS, POINTS, MASK_EMBED_LAYERS = 3, 4, 3


def original_mask2former_state_dict(*, num_classes, hidden_dim, num_queries, nheads,
                                    enc_dim_feedforward, dec_dim_feedforward, enc_layers,
                                    dec_layers, backbone_channels=SWIN_T_CHANNELS, seed=0):
    """A Mask2Former semantic-segmentation state dict in the original key layout."""
    generator = torch.Generator().manual_seed(seed)
    state = {}

    def add(name, *shape):
        state[name] = torch.randn(shape, generator=generator)

    add("backbone.patch_embed.proj.weight", backbone_channels[0], 3, 4, 4)
    add("backbone.layers.0.blocks.0.attn.qkv.weight", 3 * backbone_channels[0], backbone_channels[0])
    state["criterion.empty_weight"] = torch.ones(num_classes + 1)
    pd = "sem_seg_head.pixel_decoder."
    # input projections of res5, res4, res3 (coarsest first), conv + GroupNorm
    for i, channels in enumerate(reversed(backbone_channels[1:])):
        add(f"{pd}input_proj.{i}.0.weight", hidden_dim, channels, 1, 1)
        add(f"{pd}input_proj.{i}.0.bias", hidden_dim)
        add(f"{pd}input_proj.{i}.1.weight", hidden_dim)
        add(f"{pd}input_proj.{i}.1.bias", hidden_dim)
    add(f"{pd}transformer.level_embed", LEVELS, hidden_dim)
    for i in range(enc_layers):
        layer = f"{pd}transformer.encoder.layers.{i}."
        for name, out_dim in (("sampling_offsets", nheads * LEVELS * POINTS * 2),
                              ("attention_weights", nheads * LEVELS * POINTS),
                              ("value_proj", hidden_dim), ("output_proj", hidden_dim)):
            add(f"{layer}self_attn.{name}.weight", out_dim, hidden_dim)
            add(f"{layer}self_attn.{name}.bias", out_dim)
        add(f"{layer}linear1.weight", enc_dim_feedforward, hidden_dim)
        add(f"{layer}linear1.bias", enc_dim_feedforward)
        add(f"{layer}linear2.weight", hidden_dim, enc_dim_feedforward)
        add(f"{layer}linear2.bias", hidden_dim)
        for norm in ("norm1", "norm2"):
            add(f"{layer}{norm}.weight", hidden_dim)
            add(f"{layer}{norm}.bias", hidden_dim)
    # one extra FPN level (res2): lateral "adapter_1" (1x1, no bias, GN), output "layer_1" (3x3, GN)
    add(f"{pd}adapter_1.weight", hidden_dim, backbone_channels[0], 1, 1)
    add(f"{pd}layer_1.weight", hidden_dim, hidden_dim, 3, 3)
    for conv in ("adapter_1", "layer_1"):
        add(f"{pd}{conv}.norm.weight", hidden_dim)
        add(f"{pd}{conv}.norm.bias", hidden_dim)
    add(f"{pd}mask_features.weight", hidden_dim, hidden_dim, 1, 1)
    add(f"{pd}mask_features.bias", hidden_dim)
    pr = "sem_seg_head.predictor."
    for i in range(dec_layers):
        for layer, attn in ((f"transformer_self_attention_layers.{i}.", "self_attn"),
                            (f"transformer_cross_attention_layers.{i}.", "multihead_attn")):
            add(f"{pr}{layer}{attn}.in_proj_weight", 3 * hidden_dim, hidden_dim)
            add(f"{pr}{layer}{attn}.in_proj_bias", 3 * hidden_dim)
            add(f"{pr}{layer}{attn}.out_proj.weight", hidden_dim, hidden_dim)
            add(f"{pr}{layer}{attn}.out_proj.bias", hidden_dim)
            add(f"{pr}{layer}norm.weight", hidden_dim)
            add(f"{pr}{layer}norm.bias", hidden_dim)
        ffn = f"{pr}transformer_ffn_layers.{i}."
        add(f"{ffn}linear1.weight", dec_dim_feedforward, hidden_dim)
        add(f"{ffn}linear1.bias", dec_dim_feedforward)
        add(f"{ffn}linear2.weight", hidden_dim, dec_dim_feedforward)
        add(f"{ffn}linear2.bias", hidden_dim)
        add(f"{ffn}norm.weight", hidden_dim)
        add(f"{ffn}norm.bias", hidden_dim)
    add(f"{pr}decoder_norm.weight", hidden_dim)
    add(f"{pr}decoder_norm.bias", hidden_dim)
    add(f"{pr}query_feat.weight", num_queries, hidden_dim)
    add(f"{pr}query_embed.weight", num_queries, hidden_dim)
    add(f"{pr}level_embed.weight", LEVELS, hidden_dim)
    add(f"{pr}class_embed.weight", num_classes + 1, hidden_dim)
    add(f"{pr}class_embed.bias", num_classes + 1)
    for i in range(MASK_EMBED_LAYERS):
        add(f"{pr}mask_embed.layers.{i}.weight", hidden_dim, hidden_dim)
        add(f"{pr}mask_embed.layers.{i}.bias", hidden_dim)
    return state


def our_head(**overrides):
    kwargs = {**HEAD, **overrides}
    shape = {name: (VIT_CHANNELS, stride) for name, stride in
             (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32))}
    return Mask2FormerHead(shape, **kwargs)


def shapes_of(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# Original name -> ours, one per renamed module kind (and unchanged predictor names).
RENAMED = {
    "sem_seg_head.pixel_decoder.transformer.level_embed": "pixel_decoder.encoder.level_encoding",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.self_attn.value_proj.weight":
        "pixel_decoder.encoder.encoder.layers.1.self_attn.value_proj.weight",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.norm2.bias":
        "pixel_decoder.encoder.encoder.layers.0.norm2.bias",
    "sem_seg_head.pixel_decoder.layer_1.weight": "pixel_decoder.output_convs.0.weight",
    "sem_seg_head.pixel_decoder.layer_1.norm.bias": "pixel_decoder.output_convs.0.norm.bias",
    "sem_seg_head.pixel_decoder.mask_features.weight": "pixel_decoder.mask_feature.weight",
    "sem_seg_head.predictor.decoder_norm.weight": "predictor.post_norm.weight",
    "sem_seg_head.predictor.transformer_cross_attention_layers.2.multihead_attn.in_proj_weight":
        "predictor.transformer_cross_attention_layers.2.multihead_attn.in_proj_weight",
    "sem_seg_head.predictor.query_feat.weight": "predictor.query_feat.weight",
    "sem_seg_head.predictor.mask_embed.layers.2.bias": "predictor.mask_embed.layers.2.bias",
}


def test_original_layout_maps_onto_our_head_except_backbone_inputs():
    original = original_mask2former_state_dict(**HEAD)
    head = our_head()
    conversion = convert_mask2former_state_dict(original, target_shapes=shapes_of(head))
    for original_key, ours in RENAMED.items():
        assert torch.equal(conversion.state_dict[ours], original[original_key]), original_key

    result = head.load_state_dict(conversion.state_dict, strict=False)
    assert result.unexpected_keys == []
    # what stays at its initialisation: exactly the modules that read the (ViT) features
    assert sorted(result.missing_keys) == conversion.uninitialized
    assert all(k.startswith(("pixel_decoder.input_convs.", "pixel_decoder.lateral_convs.")) for k in result.missing_keys)
    assert len(result.missing_keys) == 3 * 4 + 3  # 3 projections (conv + GN), lateral conv (no bias) + GN

    head_keys = [k for k in original if k.startswith("sem_seg_head.")]
    skipped_head = {k for k in head_keys if k in conversion.skipped}
    assert skipped_head == {k for k in head_keys if ".input_proj." in k or ".adapter_1." in k}
    assert all(conversion.skipped[k] == SKIP_BACKBONE_INPUT for k in skipped_head)
    assert len(conversion.state_dict) == len(head_keys) - len(skipped_head)
    for key in ("backbone.patch_embed.proj.weight", "criterion.empty_weight"):
        assert conversion.skipped[key] == SKIP_OUTSIDE_HEAD


def test_other_class_count_skips_the_classifier():
    original = original_mask2former_state_dict(**{**HEAD, "num_classes": 150})
    conversion = convert_mask2former_state_dict(original, target_shapes=shapes_of(our_head()))
    for suffix in ("weight", "bias"):
        key = f"sem_seg_head.predictor.class_embed.{suffix}"
        assert "(151" in conversion.skipped[key] and "(8" in conversion.skipped[key]
        assert f"predictor.class_embed.{suffix}" in conversion.uninitialized
    assert "predictor.mask_embed.layers.0.weight" in conversion.state_dict


def test_fpn_output_convs_are_ordered_coarsest_first():
    original = {f"sem_seg_head.pixel_decoder.layer_{k}.weight": torch.full((1,), float(k)) for k in (1, 2)}
    original["sem_seg_head.predictor.query_feat.weight"] = torch.zeros(1)
    converted = convert_mask2former_state_dict(original).state_dict
    # layer_1 is the finest FPN level; our output_convs start at the coarsest
    assert converted["pixel_decoder.output_convs.1.weight"].item() == 1.0
    assert converted["pixel_decoder.output_convs.0.weight"].item() == 2.0


def test_a_checkpoint_without_a_mask2former_head_is_refused():
    with pytest.raises(ValueError, match="not a Mask2Former checkpoint"):
        convert_mask2former_state_dict({"backbone.conv1.weight": torch.zeros(1)})


# ---------------------------------------------------------------- restricted unpickler


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_numpy_pickle_round_trip(tmp_path, protocol):
    data = {
        "model": collections.OrderedDict(
            a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.array([1, 2], dtype=np.int64),
            c=np.ones((2, 2), dtype=np.float16),
        ),
        "__author__": "someone",
        "matching_heuristics": True,
        "scale": np.float32(0.5),
        "shape": (1, [2, 3]),
    }
    path = tmp_path / "m.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    loaded = safe_numpy_pickle_load(str(path))
    assert loaded.keys() == data.keys() and loaded["__author__"] == "someone"
    for key, value in data["model"].items():
        assert loaded["model"][key].dtype == value.dtype and np.array_equal(loaded["model"][key], value)
    assert loaded["scale"] == np.float32(0.5) and loaded["shape"] == (1, [2, 3])


def test_pickle_with_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:  # real-looking weights, then a payload that creates the marker
        pickle.dump({"model": {"w": np.zeros(3)}, "payload": CreatesFileWhenUnpickled(marker)}, f)
    with pytest.raises(ValueError, match=r"evil.pkl.*io\.open"):
        safe_numpy_pickle_load(str(path))
    assert not marker.exists()
    with open(path, "rb") as f:  # the payload is real: plain unpickling creates the marker
        pickle.load(f)
    assert marker.exists()


def test_object_arrays_and_corrupt_pickles_are_refused(tmp_path):
    objects = tmp_path / "objects.pkl"
    with open(objects, "wb") as f:
        pickle.dump({"model": {"w": np.array([1, "x"], dtype=object)}}, f)
    with pytest.raises(ValueError, match="objects.pkl"):
        safe_numpy_pickle_load(str(objects))
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps({"w": np.zeros(100)})[:50])
    with pytest.raises(ValueError, match="truncated.pkl"):
        safe_numpy_pickle_load(str(truncated))


# ---------------------------------------------------------------- the tool


@pytest.fixture(scope="module")
def convert_tool():
    return load_tool("convert_weights")


def _write_pkl(path, state_dict):
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state_dict.items()}, "__author__": "test"}, f)
    return str(path)


def test_tool_refuses_a_pkl_with_code_and_runs_nothing(convert_tool, tmp_path):
    marker = tmp_path / "marker"
    path = write_code_executing_checkpoint(tmp_path / "model_final.pkl", marker, plain_pickle=True)
    with pytest.raises(ValueError, match="model_final.pkl"):
        convert_tool.main(["--from", "mask2former", path, str(tmp_path / "out.pth")])
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_tool_converts_pkl_and_pth_alike(convert_tool, tmp_path, capsys):
    original = original_mask2former_state_dict(**HEAD)
    pkl = _write_pkl(tmp_path / "m2f.pkl", original)
    pth = tmp_path / "m2f.pth"
    torch.save({"model": original, "iteration": 5}, pth)
    for source in (pkl, str(pth)):
        out = str(tmp_path / (os.path.basename(source) + ".converted.pth"))
        assert convert_tool.main(["--from", "mask2former", source, out]) == 0
        saved = torch.load(out, weights_only=True)
        assert saved["checkpoint_kind"] == "partial" and saved["converted_from"] == "mask2former"
        assert torch.equal(saved["model"]["sem_seg_head.predictor.post_norm.weight"],
                           original["sem_seg_head.predictor.decoder_norm.weight"])
        assert saved["skipped"]["sem_seg_head.pixel_decoder.input_proj.0.0.weight"] == SKIP_BACKBONE_INPUT
        assert "uninitialized" not in saved  # no config given
    printed = capsys.readouterr().out
    assert "skipped sem_seg_head.pixel_decoder.adapter_1.weight" in printed
    with pytest.raises(SystemExit):
        convert_tool.main(["--from", "mask2former", pkl, str(tmp_path / "x.pth"), "--include-backbone"])


def test_tool_output_initialises_the_d2_model(convert_tool, tmp_path, catalog, caplog):
    """Checked against the synthetic config's head; training refuses it as a strict
    initialisation (naming the switch) and loads it with ``train.init_partial=True``."""
    pytest.importorskip("detectron2")
    from detectron2.config import instantiate

    from dinov3_m2f.d2.config import load_config

    original = original_mask2former_state_dict(**{**HEAD, "num_classes": 150})
    out = str(tmp_path / "init.pth")
    args = ["--from", "mask2former", _write_pkl(tmp_path / "m2f.pkl", original), out,
            "--config-file", SYNTHETIC_CONFIG]
    assert convert_tool.main(args) == 0
    saved = torch.load(out, weights_only=True)
    assert "sem_seg_head.predictor.class_embed.weight" in saved["uninitialized"]
    assert "sem_seg_head.predictor.class_embed.weight" not in saved["model"]

    model = instantiate(load_config(SYNTHETIC_CONFIG).model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"train\.init_partial=True"):
        load_init_checkpoint(model, out, partial=False)
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f.d2.checkpoint"):
        assert load_init_checkpoint(model, out, partial=True) == 0
    assert any(r.getMessage().startswith("Partial load") for r in caplog.records)
    after = model.state_dict()
    for key, value in saved["model"].items():
        assert torch.equal(after[key], value), key
    unchanged = [k for k in after if k not in saved["model"]]
    assert all(torch.equal(after[k], before[k]) for k in unchanged)
    assert torch.equal(after["sem_seg_head.pixel_decoder.encoder.level_encoding"],
                       original["sem_seg_head.pixel_decoder.transformer.level_embed"])

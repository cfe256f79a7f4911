"""Parity with the official DINOv3 segmentor (ViT-Adapter + Mask2Former head) on random weights.

Fixture: tests/fixtures/dinov3_segmentor.pt (see tests/fixtures/README.md): official
outputs in float32 on CPU for a tiny ViT (D=128, 6 blocks), the official adapter and the official M2F head
(hidden 64, 7 classes).

Measured max-abs errors (CPU, float32, impl="pytorch"; fixture noise vs float64 in brackets):
    res2 3.8e-06 (7.1e-06), res3 2.9e-06 (5.2e-06), res4 3.8e-06 (5.6e-06), res5 6.7e-06 (7.3e-06),
    pred_logits 1.2e-06 (9.7e-07), pred_masks 4.3e-06 (4.6e-06), aux_pred_logits_0 4.8e-07 (5.1e-07),
    semantic_probs 1.5e-05 (2.0e-05).
With the compiled CPU op (impl="compiled") the same except res3 2.4e-06, pred_masks 4.8e-06,
semantic_probs 1.9e-05.
The tolerances below are tests/fixtures/README.md's (>= 46x margin over the noise).
"""
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES

from dinov3_m2f.layers import MSDeformAttn
from dinov3_m2f.layers import _extension
from dinov3_m2f.modeling.adapter import DINOv3Adapter
from dinov3_m2f.modeling.dinov3 import build_dinov3, kwargs_from_official_config
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead, official_dinov3_head_kwargs
from dinov3_m2f.weights.official_head import (
    convert_official_head_state_dict,
    convert_official_segmentor_state_dict,
    load_converted_state_dict,
)
from dinov3_m2f.modeling.semantic_inference import semantic_probs

FIXTURE = Path(FIXTURES) / "dinov3_segmentor.pt"
# official adapter feature names "1".."4" -> ours
FEATURE_NAMES = {"1": "res2", "2": "res3", "3": "res4", "4": "res5"}
# official-only constructor arguments without effect here (positional-embedding size and injector
# layer-scale of the injector-era adapter; DINOv3 has no injector and uses neither)
OFFICIAL_ONLY_ADAPTER_ARGS = ("pretrain_size", "init_values")
TOL_FEATURES = 1e-3
TOL_LOGITS = 1e-4


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def _build(config):
    assert config["adapter"]["init_values"] == 0.0  # no injector: nothing to reproduce
    backbone = build_dinov3(None, **kwargs_from_official_config(config["backbone"]))
    adapter_kwargs = {k: v for k, v in config["adapter"].items() if k not in OFFICIAL_ONLY_ADAPTER_ARGS}
    adapter = DINOv3Adapter(backbone, **adapter_kwargs)
    internals = config["head_fixed_internals"]
    head_kwargs = official_dinov3_head_kwargs(
        hidden_dim=config["head"]["hidden_dim"], num_classes=config["head"]["num_classes"]
    )
    assert head_kwargs["num_queries"] == internals["predictor"]["num_queries"]
    assert head_kwargs["dec_layers"] == internals["predictor"]["dec_layers"]
    assert head_kwargs["enc_layers"] == internals["pixel_decoder"]["transformer_enc_layers"]
    assert head_kwargs["pre_norm"] == internals["predictor"]["pre_norm"]
    input_shape = {name: (adapter.out_channels, stride) for name, stride in adapter.out_strides.items()}
    head = Mask2FormerHead(input_shape, **head_kwargs)
    return adapter, head


def _set_impl(module: torch.nn.Module, impl: str) -> None:
    for m in module.modules():
        if isinstance(m, MSDeformAttn):
            m.impl = impl


def _run(adapter, head, image):
    adapter.eval()
    head.eval()
    with torch.no_grad():
        features = adapter(image)
        out = head(features)
    probs = semantic_probs(out["pred_logits"], out["pred_masks"], output_size=tuple(image.shape[-2:]))
    return features, out, probs


def _max_abs(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


IMPLS = [
    "pytorch",
    pytest.param(
        "compiled",
        marks=pytest.mark.skipif(not _extension.is_available(), reason="compiled extension not built"),
    ),
]


@pytest.mark.parametrize("impl", IMPLS)
def test_segmentor_parity(fixture, impl):
    adapter, head = _build(fixture["config"])
    load_converted_state_dict(
        convert_official_segmentor_state_dict(fixture["state_dict"]), adapter=adapter, head=head
    )
    _set_impl(adapter, impl)
    _set_impl(head, impl)
    features, out, probs = _run(adapter, head, fixture["image"])

    for official_name, name in FEATURE_NAMES.items():
        assert _max_abs(features[name], fixture["adapter_features"][official_name]) <= TOL_FEATURES, name
    assert _max_abs(out["pred_logits"], fixture["pred_logits"]) <= TOL_LOGITS
    assert _max_abs(out["aux_outputs"][0]["pred_logits"], fixture["aux_pred_logits_0"]) <= TOL_LOGITS
    assert _max_abs(out["pred_masks"], fixture["pred_masks"]) <= TOL_FEATURES
    assert _max_abs(probs, fixture["semantic_probs"]) <= TOL_FEATURES


def test_head_checkpoint_format_gives_identical_outputs(fixture):
    full_adapter, full_head = _build(fixture["config"])
    full = convert_official_segmentor_state_dict(fixture["state_dict"])
    load_converted_state_dict(full, adapter=full_adapter, head=full_head)
    adapter, head = _build(fixture["config"])
    adapter.backbone.load_state_dict(full["backbone"], strict=True)
    load_converted_state_dict(convert_official_head_state_dict(fixture["head_state_dict"]), adapter=adapter, head=head)

    image = fixture["image"]
    features_ref, out_ref, _ = _run(full_adapter, full_head, image)
    features, out, _ = _run(adapter, head, image)
    for name in FEATURE_NAMES.values():
        assert torch.equal(features[name], features_ref[name]), name
    assert torch.equal(out["pred_logits"], out_ref["pred_logits"])
    assert torch.equal(out["pred_masks"], out_ref["pred_masks"])


def test_converter_errors(fixture):
    adapter, head = _build(fixture["config"])
    state_dict = fixture["state_dict"]
    with pytest.raises(ValueError, match="outside"):
        convert_official_segmentor_state_dict({**state_dict, "model.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="head"):
        convert_official_segmentor_state_dict(
            {k: v for k, v in state_dict.items() if not k.startswith("segmentation_model.1.")}
        )
    with pytest.raises(ValueError, match="backbone"):
        convert_official_head_state_dict(state_dict)
    with pytest.raises(ValueError, match="outside"):
        convert_official_head_state_dict({"state_dict": fixture["head_state_dict"]})

    converted = convert_official_head_state_dict(fixture["head_state_dict"])
    del converted["adapter"]["level_embed"]
    with pytest.raises(RuntimeError, match="level_embed"):
        load_converted_state_dict(converted, adapter=adapter, head=head)
    converted = convert_official_head_state_dict(fixture["head_state_dict"])
    converted["head"]["predictor.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="predictor.extra"):
        load_converted_state_dict(converted, adapter=adapter, head=head)

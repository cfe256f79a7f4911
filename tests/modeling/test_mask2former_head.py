"""Mask2FormerHead / pixel decoder / transformer decoder: shapes, gradients, options, masking."""
import collections

import pytest
import torch

from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead, official_dinov3_head_kwargs
from dinov3_m2f.modeling.pixel_decoder import MSDeformAttnPixelDecoder

IN_CHANNELS = 48
HIDDEN = 32
NUM_CLASSES = 5
NUM_QUERIES = 10
DEC_LAYERS = 4
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
INPUT_SHAPE = {name: (IN_CHANNELS, stride) for name, stride in STRIDES.items()}

# Detectron2's ShapeSpec has the same two fields; the head must accept such objects.
ShapeLike = collections.namedtuple("ShapeLike", ["channels", "stride"])


def _tiny_head(**overrides) -> Mask2FormerHead:
    kwargs = dict(
        num_classes=NUM_CLASSES,
        hidden_dim=HIDDEN,
        num_queries=NUM_QUERIES,
        nheads=4,
        enc_dim_feedforward=64,
        dec_dim_feedforward=64,
        enc_layers=2,
        dec_layers=DEC_LAYERS,
    )
    kwargs.update(overrides)
    return Mask2FormerHead(INPUT_SHAPE, **kwargs)


def _features(batch: int = 2, height: int = 64, width: int = 96, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(batch, IN_CHANNELS, height // s, width // s, generator=gen)
        for name, s in STRIDES.items()
    }


def test_output_shapes_non_square_batch2():
    torch.manual_seed(0)
    head = _tiny_head().eval()
    out = head(_features())
    assert out["pred_logits"].shape == (2, NUM_QUERIES, NUM_CLASSES + 1)
    assert out["pred_masks"].shape == (2, NUM_QUERIES, 16, 24)
    assert len(out["aux_outputs"]) == DEC_LAYERS
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == out["pred_logits"].shape
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    # the first auxiliary prediction comes from the learnable queries alone: same for every image
    torch.testing.assert_close(out["aux_outputs"][0]["pred_logits"][0], out["aux_outputs"][0]["pred_logits"][1])
    assert not torch.allclose(out["pred_logits"][0], out["pred_logits"][1])


def test_pixel_decoder_levels_coarse_to_fine():
    torch.manual_seed(0)
    decoder = MSDeformAttnPixelDecoder(
        {k: ShapeLike(*v) for k, v in INPUT_SHAPE.items()}, conv_dim=HIDDEN, mask_dim=16, nheads=4,
        dim_feedforward=64, enc_layers=1,
    ).eval()
    assert decoder.transformer_in_features == ["res5", "res4", "res3"]
    mask_features, multi_scale = decoder(_features(1))
    assert mask_features.shape == (1, 16, 16, 24)
    assert [tuple(f.shape) for f in multi_scale] == [(1, HIDDEN, 2, 3), (1, HIDDEN, 4, 6), (1, HIDDEN, 8, 12)]


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = _tiny_head().train()
    out = head(_features())
    loss = out["pred_logits"].square().mean() + out["pred_masks"].square().mean()
    loss = loss + sum(a["pred_logits"].square().mean() + a["pred_masks"].square().mean() for a in out["aux_outputs"])
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert head.pixel_decoder.encoder.encoder.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0
    assert head.predictor.transformer_cross_attention_layers[0].multihead_attn.in_proj_weight.grad.abs().sum() > 0


def test_pre_norm_is_a_setting_with_the_same_keys():
    torch.manual_seed(0)
    post = _tiny_head().eval()
    pre = _tiny_head(pre_norm=True).eval()
    pre.load_state_dict(post.state_dict(), strict=True)
    features = _features(1)
    out_post, out_pre = post(features), pre(features)
    assert torch.isfinite(out_pre["pred_masks"]).all()
    assert not torch.allclose(out_pre["pred_logits"], out_post["pred_logits"])
    # the prediction from the initial queries does not go through any layer
    torch.testing.assert_close(out_pre["aux_outputs"][0]["pred_logits"], out_post["aux_outputs"][0]["pred_logits"])


def test_upsample_mode_and_input_projection_options():
    torch.manual_seed(0)
    bilinear = _tiny_head().eval()
    nearest = _tiny_head(upsample_mode="nearest", enforce_input_project=True).eval()
    assert len(list(nearest.predictor.input_proj.parameters())) == 6  # 3 levels x (weight, bias)
    assert len(list(bilinear.predictor.input_proj.parameters())) == 0
    with pytest.raises(ValueError, match="upsample_mode"):
        _tiny_head(upsample_mode="bicubic")
    with pytest.raises(ValueError, match="transformer_in_features"):
        _tiny_head(transformer_in_features=("res3", "res4", "res6"))
    out = nearest(_features(1))
    assert out["pred_masks"].shape == (1, NUM_QUERIES, 16, 24)


def test_attention_mask_threshold_and_empty_rows():
    torch.manual_seed(0)
    predictor = _tiny_head().predictor
    queries = torch.randn(1, NUM_QUERIES, HIDDEN)
    mask_features = torch.randn(1, HIDDEN, 8, 8)
    _, mask_logits, attend = predictor._predict(queries, mask_features, (8, 8))
    assert attend.shape == (1, 1, NUM_QUERIES, 64)
    expected = mask_logits.sigmoid().flatten(2) >= 0.5
    empty = ~expected.any(-1)
    expected[empty] = True
    assert torch.equal(attend[:, 0], expected)

    # queries whose mask logits are negative everywhere attend to every pixel instead of none
    last = predictor.mask_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1.0)
    _, mask_logits, attend = predictor._predict(queries, torch.ones(1, HIDDEN, 8, 8), (8, 8))
    assert (mask_logits < 0).all()
    assert attend.all()


def test_official_dinov3_shape_kwargs():
    kwargs = official_dinov3_head_kwargs(hidden_dim=64, num_classes=7)
    head = Mask2FormerHead({k: (128, s) for k, s in STRIDES.items()}, **kwargs)
    predictor = head.predictor
    assert predictor.num_layers == 9 and predictor.num_queries == 100 and predictor.num_heads == 16
    assert predictor.transformer_ffn_layers[0].linear1.out_features == 4096
    assert head.pixel_decoder.encoder.encoder.layers[0].linear1.out_features == 4096
    assert len(head.pixel_decoder.encoder.encoder.layers) == 6
    assert not predictor.transformer_ffn_layers[0].pre_norm
    # the official head keeps its pixel decoder in float32 on every device
    assert head.pixel_decoder.runs_in_fp32(torch.device("cpu"))


@pytest.mark.parametrize(
    "pixel_decoder_fp32, fp32_on",
    [(None, {"cuda"}), (True, {"cpu", "cuda"}), (False, set())],
    ids=["per-device", "fp32", "autocast"],
)
def test_pixel_decoder_precision_per_device(pixel_decoder_fp32, fp32_on):
    pixel_decoder = _tiny_head(pixel_decoder_fp32=pixel_decoder_fp32).pixel_decoder
    for device in ("cpu", "cuda"):
        assert pixel_decoder.runs_in_fp32(torch.device(device)) == (device in fp32_on), device


@pytest.mark.parametrize("pixel_decoder_fp32", [None, True, False], ids=["per-device", "fp32", "autocast"])
def test_pixel_decoder_under_cpu_bf16_autocast(pixel_decoder_fp32):
    """The default op implementation runs the pixel decoder in either precision under autocast,
    and the bfloat16 one stays close to float32."""
    torch.manual_seed(0)
    head = _tiny_head(pixel_decoder_fp32=pixel_decoder_fp32).eval()
    features = _features()
    with torch.no_grad():
        reference, _ = head.pixel_decoder(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask_features, multi_scale = head.pixel_decoder(features)
    expected = torch.float32 if pixel_decoder_fp32 else torch.bfloat16
    assert mask_features.dtype == expected and all(f.dtype == expected for f in multi_scale)
    # bfloat16 keeps 8 significant bits: measured 0.021 at most on values up to 3.5
    torch.testing.assert_close(mask_features.float(), reference, rtol=0, atol=0.04)

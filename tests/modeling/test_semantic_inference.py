import pytest
import torch
import torch.nn.functional as F

from dinov3_m2f.modeling.semantic_inference import semantic_probs, slide_inference, tta_inference

NUM_CLASSES = 3


def _images(h, w, seed=0):
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _per_pixel_predict(images):
    """A per-pixel (1x1) predictor: translation-equivariant, independent of crop borders."""
    weight = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.0], [-1.5, 0.2, 2.0]])
    return torch.einsum("kc,bchw->bkhw", weight, images).softmax(1)


def test_semantic_probs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, NUM_CLASSES + 1, generator=g)
    masks = torch.randn(2, 4, 5, 6, generator=g)
    probs = semantic_probs(logits, masks)
    assert probs.shape == (2, NUM_CLASSES, 5, 6)
    expected = torch.zeros(2, NUM_CLASSES, 5, 6)
    for b in range(2):
        for q in range(4):
            cls = logits[b, q].softmax(-1)[:NUM_CLASSES]
            expected[b] += cls[:, None, None] * masks[b, q].sigmoid()[None]
    torch.testing.assert_close(probs, expected)
    up = semantic_probs(logits.half(), masks.half(), output_size=(10, 12))
    assert up.shape == (2, NUM_CLASSES, 10, 12) and up.dtype == torch.float32
    resized = F.interpolate(masks.half().float(), size=(10, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, semantic_probs(logits.half(), resized))
    with pytest.raises(ValueError, match="pred_masks"):
        semantic_probs(logits, masks[:, :3])


def test_slide_single_crop_equals_whole():
    images = _images(32, 48)
    out = slide_inference(
        _per_pixel_predict, images, crop_size=(32, 48), stride=(20, 20), num_classes=NUM_CLASSES
    )
    torch.testing.assert_close(out, _per_pixel_predict(images))


@pytest.mark.parametrize(
    "size,crop,stride",
    [
        ((37, 50), (16, 20), (10, 12)),
        ((20, 64), (32, 32), (21, 17)),  # image shorter than the crop
        ((33, 33), (16, 16), (16, 16)),
    ],
)
def test_slide_overlap_equals_whole_for_per_pixel_predict(size, crop, stride):
    images = _images(*size)
    crops = []

    def predict(x):
        crops.append(tuple(x.shape[-2:]))
        return _per_pixel_predict(x)

    out = slide_inference(predict, images, crop_size=crop, stride=stride, num_classes=NUM_CLASSES)
    assert out.shape == (2, NUM_CLASSES, *size)
    torch.testing.assert_close(out, _per_pixel_predict(images))
    assert len(crops) > 1
    assert set(crops) == {(min(crop[0], size[0]), min(crop[1], size[1]))}


def test_slide_averages_overlaps():
    images = torch.zeros(1, 3, 4, 30)
    calls = []

    def predict(x):
        calls.append(1)
        return torch.full((1, 1, *x.shape[-2:]), float(len(calls)))

    out = slide_inference(predict, images, crop_size=(4, 20), stride=(4, 10), num_classes=1)
    assert len(calls) == 2
    torch.testing.assert_close(out[0, 0, 0, :10], torch.full((10,), 1.0))
    torch.testing.assert_close(out[0, 0, 0, 10:20], torch.full((10,), 1.5))
    torch.testing.assert_close(out[0, 0, 0, 20:], torch.full((10,), 2.0))


def test_slide_errors():
    images = _images(16, 16)
    with pytest.raises(ValueError, match="stride"):
        slide_inference(
            _per_pixel_predict, images, crop_size=(8, 8), stride=(9, 4), num_classes=NUM_CLASSES
        )
    with pytest.raises(ValueError, match="predict returned"):
        slide_inference(
            _per_pixel_predict, images, crop_size=(8, 8), stride=(4, 4), num_classes=NUM_CLASSES + 1
        )


def test_flip_tta_symmetric():
    half = torch.rand(1, 3, 8, 6, generator=torch.Generator().manual_seed(1))
    images = torch.cat([half, half.flip(-1)], dim=-1)  # [1, 3, 8, 12], left-right symmetric

    def position_dependent(x):
        ramp = torch.linspace(0, 1, x.shape[-1])  # breaks the symmetry of a single view
        return _per_pixel_predict(x) + ramp

    flipped = tta_inference(position_dependent, images, flip=True, size_divisibility=1)
    torch.testing.assert_close(flipped, flipped.flip(-1))
    single = tta_inference(position_dependent, images, flip=False, size_divisibility=1)
    assert not torch.allclose(single, single.flip(-1))
    torch.testing.assert_close(single, position_dependent(images))


def test_multi_scale_shapes_and_sizes():
    images = _images(37, 50)
    sizes = []

    def predict(x):
        sizes.append(tuple(x.shape[-2:]))
        return _per_pixel_predict(x)

    out = tta_inference(predict, images, scales=(0.75, 1.0, 1.25), flip=True, size_divisibility=32)
    assert out.shape == (2, NUM_CLASSES, 37, 50)
    # 37 * 0.75 = 27.75 -> 28 -> 32; 50 * 0.75 = 37.5 -> 38 -> 64; 37 -> 64; 50 * 1.25 = 62.5 -> 63 -> 64.
    assert sizes == [(32, 64), (32, 64), (64, 64), (64, 64), (64, 64), (64, 64)]
    # On a constant image every resize is exact, so TTA equals whole inference.
    constant = torch.ones(1, 3, 37, 50) * torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    tta = tta_inference(_per_pixel_predict, constant, scales=(0.5, 1.3), flip=True)
    torch.testing.assert_close(tta, _per_pixel_predict(constant))
    with pytest.raises(ValueError, match="scales"):
        tta_inference(_per_pixel_predict, images, scales=())


def test_tta_composes_with_slide():
    images = _images(40, 52)

    def slide(x):
        return slide_inference(
            _per_pixel_predict, x, crop_size=(32, 32), stride=(20, 20), num_classes=NUM_CLASSES
        )

    out = tta_inference(slide, images, scales=(1.0,), flip=True, size_divisibility=1)
    torch.testing.assert_close(out, _per_pixel_predict(images))


def _border_sensitive_predict(images):
    """A 3x3 zero-padded conv plus a ramp over the crop: each window gives its own scores."""
    weight = torch.linspace(-1.0, 1.0, NUM_CLASSES * 3 * 9).reshape(NUM_CLASSES, 3, 3, 3)
    ramp = torch.linspace(0.0, 1.0, images.shape[-1])
    return F.conv2d(images, weight, padding=1) + ramp


@pytest.mark.parametrize("slide_batch", [2, 3, 4, 100])
def test_slide_batch_equals_unbatched(slide_batch):
    images = _images(37, 50)
    kwargs = dict(crop_size=(16, 20), stride=(10, 12), num_classes=NUM_CLASSES)
    batch_sizes = []

    def predict(x):
        batch_sizes.append(x.shape[0])
        return _border_sensitive_predict(x)

    reference = slide_inference(_border_sensitive_predict, images, **kwargs)
    out = slide_inference(predict, images, slide_batch=slide_batch, **kwargs)
    torch.testing.assert_close(out, reference)
    num_windows = 4 * 4  # 37 -> starts 0, 10, 20, 21; 50 -> 0, 12, 24, 30
    per_call = [min(slide_batch, num_windows - start) for start in range(0, num_windows, slide_batch)]
    assert batch_sizes == [2 * k for k in per_call]  # 2 images per window
    # The border-sensitive predictor really depends on the window: averaging differs from whole-image.
    assert not torch.allclose(out, _border_sensitive_predict(images))


def test_slide_batch_is_checked():
    images = _images(16, 16)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="slide_batch"):
            slide_inference(
                _per_pixel_predict, images, crop_size=(8, 8), stride=(4, 4), num_classes=NUM_CLASSES, slide_batch=bad
            )


def test_slide_batch_with_adapter_and_mask2former():
    """The real stack (the tiny model, eval mode) gives the same scores batched."""
    from dinov3_m2f.modeling.segmentor import build_tiny_segmentor

    torch.manual_seed(0)
    adapter, head = (module.eval() for module in build_tiny_segmentor(num_classes=NUM_CLASSES))

    def predict(x):
        out = head(adapter(x))
        return semantic_probs(out["pred_logits"], out["pred_masks"], output_size=tuple(x.shape[-2:]))

    images = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(2))
    kwargs = dict(crop_size=(64, 64), stride=(32, 48), num_classes=NUM_CLASSES)
    with torch.no_grad():
        reference = slide_inference(predict, images, **kwargs)
        batched = slide_inference(predict, images, slide_batch=4, **kwargs)
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-6)  # fp32 noise only

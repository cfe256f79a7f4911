"""DINOv3Mask2Former: training losses, inference sizes and modes, normalization, frozen ViT."""
import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from dinov3_m2f.d2 import D2DINOv3Backbone, DINOv3Mask2Former, dinov3_pyramid_shape  # noqa: E402
from dinov3_m2f.modeling.criterion import SetCriterion, make_weight_dict  # noqa: E402
from dinov3_m2f.modeling.dinov3 import NORMALIZATION  # noqa: E402
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead  # noqa: E402
from dinov3_m2f.modeling.matcher import HungarianMatcher  # noqa: E402

NUM_CLASSES = 3
EMBED_DIM = 32
DEC_LAYERS = 2
NUM_POINTS = 256


def _tiny_model(**kwargs) -> DINOv3Mask2Former:
    torch.manual_seed(0)
    backbone = D2DINOv3Backbone(
        preset=None,
        vit_kwargs=dict(embed_dim=EMBED_DIM, depth=4, num_heads=2, patch_size=16),
        interaction_indexes=[0, 1, 2, 3],
        init_seed=0,
        adapter_kwargs=dict(conv_inplane=8, deform_num_heads=2, n_points=2, drop_path_rate=0.0),
    )
    head = Mask2FormerHead(
        dinov3_pyramid_shape(channels=EMBED_DIM),
        num_classes=NUM_CLASSES,
        hidden_dim=32,
        num_queries=4,
        nheads=2,
        enc_dim_feedforward=32,
        dec_dim_feedforward=32,
        enc_layers=1,
        dec_layers=DEC_LAYERS,
        norm="GN",
    )
    criterion = SetCriterion(
        num_classes=NUM_CLASSES,
        matcher=HungarianMatcher(num_points=NUM_POINTS),
        weight_dict=make_weight_dict(num_aux_layers=DEC_LAYERS),
        num_points=NUM_POINTS,
    )
    return DINOv3Mask2Former(
        backbone=backbone, sem_seg_head=head, criterion=criterion, num_classes=NUM_CLASSES, **kwargs
    )


def _image(height: int, width: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8)


def test_training_returns_weighted_finite_losses_for_every_key():
    model = _tiny_model().train()
    labels = torch.randint(0, NUM_CLASSES, (45, 70))
    labels[:5] = 255
    batch = [
        {"image": _image(45, 70), "sem_seg": labels},
        {"image": _image(64, 40), "sem_seg": torch.randint(0, NUM_CLASSES, (64, 40))},
    ]
    losses = model(batch)
    assert set(losses) == set(make_weight_dict(num_aux_layers=DEC_LAYERS))
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.query_feat.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.vit.parameters())
    assert not model.backbone.vit.training


def test_loss_weights_are_applied():
    model = _tiny_model().train()
    batch = [{"image": _image(64, 64), "sem_seg": torch.randint(0, NUM_CLASSES, (64, 64))}]
    weights = dict(model.criterion.weight_dict)
    model.criterion.weight_dict = {
        k: 0.0 if k.startswith("loss_dice") else v for k, v in weights.items()
    }
    torch.manual_seed(1)
    losses = model(batch)
    assert all(float(v.detach()) == 0.0 for k, v in losses.items() if k.startswith("loss_dice"))
    assert float(losses["loss_ce"].detach()) > 0.0


def test_training_requires_sem_seg_of_the_image_size():
    model = _tiny_model().train()
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": _image(64, 64)}])
    with pytest.raises(ValueError, match=r"\(32, 64\) does not match .* \(64, 64\) \(a.png\)"):
        model([{"image": _image(64, 64), "sem_seg": torch.zeros(32, 64, dtype=torch.int64),
                "file_name": "a.png"}])


def test_training_batch_pads_images_and_labels_in_one_place():
    model = _tiny_model().train()
    labels = torch.randint(0, NUM_CLASSES, (45, 70))
    images, padded = model._training_batch(
        [{"image": _image(45, 70), "sem_seg": labels},
         {"image": _image(64, 40), "sem_seg": torch.zeros(64, 40, dtype=torch.int64)}]
    )
    # one size for the batch, a multiple of the backbone's 32; labels padded with ignore_value
    assert images.shape == (2, 3, 64, 96) and padded.shape == (2, 64, 96)
    assert torch.equal(padded[0, :45, :70], labels)
    assert (padded[0, 45:] == 255).all() and (padded[0, :, 70:] == 255).all()
    assert (images[0, :, 45:] == 0).all()  # image padding: 0 after normalization (the mean)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(test_mode="whole"),
        dict(test_mode="slide", slide_crop_size=(64, 64), slide_stride=(40, 40)),
        dict(test_mode="tta", tta_scales=(0.75, 1.0), tta_flip=True),
    ],
)
def test_inference_at_original_size_for_non_divisible_inputs(kwargs):
    model = _tiny_model(**kwargs).eval()
    with torch.no_grad():
        outputs = model(
            [
                {"image": _image(45, 70), "height": 90, "width": 140},
                {"image": _image(50, 33)},
            ]
        )
    assert outputs[0]["sem_seg"].shape == (NUM_CLASSES, 90, 140)
    assert outputs[1]["sem_seg"].shape == (NUM_CLASSES, 50, 33)
    scores = outputs[1]["sem_seg"]
    assert torch.isfinite(scores).all() and (scores >= 0).all()


def test_normalization_buffers_follow_weight_family():
    model = _tiny_model(normalization="sat493m")
    mean, std = NORMALIZATION["sat493m"]
    assert torch.allclose(model.pixel_mean.flatten(), torch.tensor(mean) * 255)
    assert torch.allclose(model.pixel_std.flatten(), torch.tensor(std) * 255)
    assert "pixel_mean" not in model.state_dict()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(normalization="imagenet"), "normalization"),
        (dict(test_mode="sliding"), "test_mode"),
        (dict(test_mode="slide"), "slide_crop_size"),
        (dict(slide_batch=0), "slide_batch"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny_model(**kwargs)


@pytest.mark.parametrize("test_mode", ["slide", "tta"])
def test_slide_batch_reaches_the_windows_and_keeps_the_scores(test_mode):
    # 96x128 image, 64x64 windows every 32 px: 2 x 3 = 6 windows per view
    kwargs = dict(test_mode=test_mode, slide_crop_size=(64, 64), slide_stride=(32, 32), tta_scales=(1.0,))
    image = {"image": _image(96, 128)}
    scores, batch_sizes = {}, {}
    for slide_batch in (1, 4):
        model = _tiny_model(slide_batch=slide_batch, **kwargs).eval()
        batch_sizes[slide_batch] = sizes = []
        predict = model._predict_scores

        def recording_predict(images, predict=predict, sizes=sizes):
            sizes.append(images.shape[0])
            return predict(images)

        model._predict_scores = recording_predict
        with torch.no_grad():
            scores[slide_batch] = model([image])[0]["sem_seg"]
    assert batch_sizes == {1: [1] * 6, 4: [4, 2]}
    torch.testing.assert_close(scores[4], scores[1])

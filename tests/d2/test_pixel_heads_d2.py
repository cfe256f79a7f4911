"""DINOv3PixelSegmentor (UPerNet on the adapter, linear on the plain ViT) and
D2DINOv3ViTBackbone: the synthetic configs instantiate, train a few steps and predict at the
original size; the meta-architecture shares inference with DINOv3Mask2Former."""
import os

import pytest
from helpers import REPO

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402

from dinov3_m2f.d2 import (  # noqa: E402
    D2DINOv3ViTBackbone,
    DINOv3PixelSegmentor,
    dinov3_vit_shape,
    total_channels,
)
from dinov3_m2f.modeling.heads import LinearHead  # noqa: E402
from dinov3_m2f.modeling.pixel_losses import PixelSegmentationLoss  # noqa: E402

CONFIGS = os.path.join(REPO, "configs")
TINY_VIT = dict(embed_dim=32, depth=3, num_heads=2, patch_size=16)
NUM_CLASSES = 7


def _batch(size=(64, 96), num=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g),
            "sem_seg": torch.randint(0, NUM_CLASSES, size, generator=g),
        }
        for _ in range(num)
    ]


def _linear_segmentor(**kwargs) -> DINOv3PixelSegmentor:
    """A 3-class linear probe on the tiny seeded ViT's last block."""
    return DINOv3PixelSegmentor(
        backbone=D2DINOv3ViTBackbone(preset=None, vit_kwargs=TINY_VIT, init_seed=0),
        sem_seg_head=LinearHead(in_channels=32, num_classes=3),
        criterion=PixelSegmentationLoss(num_classes=3),
        num_classes=3,
        **kwargs,
    )


def test_vit_backbone_returns_last_layers_patch_grids():
    backbone = D2DINOv3ViTBackbone(preset=None, vit_kwargs=TINY_VIT, init_seed=0, num_layers=2)
    assert backbone.output_shape() == dinov3_vit_shape(channels=32, num_layers=2)
    assert backbone.output_shape()["layer1"] == ShapeSpec(channels=32, stride=16)
    assert backbone.padding_constraints["size_divisibility"] == 16
    assert not any(p.requires_grad for p in backbone.parameters())
    x = torch.randn(1, 3, 48, 80)
    out = backbone(x)
    expected = backbone.vit.get_intermediate_layers(x, n=2, reshape=True, norm=True)
    assert list(out) == ["layer0", "layer1"]
    torch.testing.assert_close(out["layer1"], expected[1])
    assert out["layer0"].shape == (1, 32, 3, 5)
    with pytest.raises(ValueError, match="num_layers"):
        D2DINOv3ViTBackbone(preset=None, vit_kwargs=TINY_VIT, init_seed=0, num_layers=4)


def test_in_features_are_validated():
    assert _linear_segmentor().in_features == ["layer0"]
    with pytest.raises(ValueError, match="res5"):
        _linear_segmentor(in_features=["res5"])
    assert total_channels(dinov3_vit_shape(channels=32, num_layers=4)) == 128


@pytest.mark.parametrize("name", ["upernet_tiny_synthetic", "linear_tiny_synthetic"])
def test_synthetic_config_trains_and_predicts_original_size(name):
    cfg = LazyConfig.load(os.path.join(CONFIGS, "synthetic", f"{name}.py"))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert isinstance(model, DINOv3PixelSegmentor)
    cfg.optimizer.params.model = model
    cfg.optimizer.lr = 1e-2
    optimizer = instantiate(cfg.optimizer)
    head_params = {id(p) for p in model.sem_seg_head.parameters()}
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert head_params <= optimized
    assert not optimized & {id(p) for n, p in model.named_parameters() if ".vit." in f".{n}"}

    model.train()
    batch = _batch()
    losses = []
    for _ in range(3):
        loss_dict = model(batch)
        assert set(loss_dict) == {"loss_ce"}
        optimizer.zero_grad()
        sum(loss_dict.values()).backward()
        optimizer.step()
        losses.append(float(sum(loss_dict.values()).detach()))
    assert losses[-1] < losses[0]

    model.eval()
    image = batch[0]["image"][:, :50, :70]  # not a multiple of the padding constraint
    with torch.no_grad():
        out = model([{"image": image, "height": 100, "width": 140}, {"image": image}])
    assert out[0]["sem_seg"].shape == (NUM_CLASSES, 100, 140)
    assert out[1]["sem_seg"].shape == (NUM_CLASSES, 50, 70)
    torch.testing.assert_close(out[1]["sem_seg"].sum(0), torch.ones(50, 70))


def test_slide_inference_and_padded_labels():
    model = _linear_segmentor(test_mode="slide", slide_crop_size=(32, 32), slide_stride=(16, 16))
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)}])
    assert out[0]["sem_seg"].shape == (3, 40, 56)
    model.train()
    # 40x56 pads to 48x64; the padded label pixels are ignored (all-ignore label -> zero loss)
    loss = model([{"image": torch.zeros(3, 40, 56, dtype=torch.uint8),
                   "sem_seg": torch.full((40, 56), 255)}])["loss_ce"]
    assert float(loss) == 0.0


def test_meta_arch_applies_the_criterion_weights():
    model = _linear_segmentor().train()
    model.criterion.weight_dict["loss_ce"] = 3.0
    batch = [{"image": torch.zeros(3, 32, 32, dtype=torch.uint8),
              "sem_seg": torch.zeros(32, 32, dtype=torch.int64)}]
    torch.manual_seed(0)
    weighted = model(batch)["loss_ce"]
    images, labels = model._training_batch(batch)
    torch.testing.assert_close(weighted, 3.0 * model._losses(images, labels)["loss_ce"])

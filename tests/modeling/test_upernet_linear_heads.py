"""UPerNetHead, LinearHead and PixelSegmentationLoss (CPU, tiny shapes)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov3_m2f.modeling.heads import LinearHead, UPerNetHead
from dinov3_m2f.modeling.pixel_losses import PixelSegmentationLoss

IGNORE = 255
STRIDES = (4, 8, 16, 32)


def _pyramid(batch, height, width, channels, seed=0):
    """Random res2..res5 features for an image of ``height x width`` (both divisible by 32)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, height // s, width // s, generator=g) for c, s in zip(channels, STRIDES)]


@pytest.mark.parametrize("norm", ["BN", "SyncBN", "GN", lambda c: nn.GroupNorm(4, c)])
def test_upernet_shapes_non_square(norm):
    in_channels = (8, 16, 24, 32)
    head = UPerNetHead(in_channels=in_channels, num_classes=5, channels=32, norm=norm)
    features = _pyramid(2, 64, 160, in_channels)
    out = head(features)
    assert out.shape == (2, 5, 16, 40)
    head.eval()
    assert head(features).shape == (2, 5, 16, 40)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_upernet_norm_choice_and_key_names():
    gn = UPerNetHead(in_channels=(8, 8), num_classes=3, channels=32, norm="GN", pool_scales=(1, 2))
    assert isinstance(gn.bottleneck.norm, nn.GroupNorm)
    assert isinstance(UPerNetHead(in_channels=(8, 8), num_classes=3, channels=32).bottleneck.norm, nn.BatchNorm2d)
    keys = gn.state_dict().keys()
    for expected in ("psp_modules.1.1.conv.weight", "bottleneck.norm.weight", "lateral_convs.0.conv.weight",
                     "fpn_convs.0.norm.bias", "fpn_bottleneck.conv.weight", "conv_seg.weight", "conv_seg.bias"):
        assert expected in keys
    assert len(gn.lateral_convs) == len(gn.fpn_convs) == 1


def test_upernet_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        UPerNetHead(in_channels=(8, 8), num_classes=3, channels=16, norm="LN")
    with pytest.raises(ValueError, match="GN"):
        UPerNetHead(in_channels=(8, 8), num_classes=3, channels=16, norm="GN")
    with pytest.raises(TypeError, match="norm factory"):
        UPerNetHead(in_channels=(8, 8), num_classes=3, channels=16, norm=lambda c: None)
    head = UPerNetHead(in_channels=(8, 16), num_classes=3, channels=16)
    with pytest.raises(ValueError, match=r"features\[1\]"):
        head([torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)])
    with pytest.raises(ValueError, match="levels"):
        head([torch.randn(2, 8, 8, 8)])


def test_linear_head_shapes_and_official_key_names():
    head = LinearHead(in_channels=3 * 16, num_classes=7, dropout=0.1)
    feats = [torch.randn(2, 16, 6, 10) for _ in range(3)]
    out = head(feats)
    assert out.shape == (2, 7, 6, 10)
    head.eval()
    assert head(feats).shape == (2, 7, 6, 10)
    # Official DINOv3 linear head keys (SyncBatchNorm has the same keys as BatchNorm2d).
    assert set(head.state_dict()) == {
        "batchnorm_layer.weight", "batchnorm_layer.bias", "batchnorm_layer.running_mean",
        "batchnorm_layer.running_var", "batchnorm_layer.num_batches_tracked", "conv.weight", "conv.bias",
    }
    plain = LinearHead(in_channels=16, num_classes=7, use_batchnorm=False)
    assert isinstance(plain.batchnorm_layer, nn.Identity)
    assert set(plain.state_dict()) == {"conv.weight", "conv.bias"}
    x = torch.randn(2, 16, 3, 5)
    torch.testing.assert_close(plain([x]), plain.conv(x))


def test_linear_head_bad_features():
    head = LinearHead(in_channels=32, num_classes=3)
    with pytest.raises(ValueError, match="in_channels=32"):
        head([torch.randn(2, 16, 4, 4)])
    with pytest.raises(ValueError, match="same B, h, w"):
        head([torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 5)])
    with pytest.raises(ValueError, match="at least one"):
        head([])


def _labels(batch, height, width, num_classes, ignore_frac, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (batch, height, width), generator=g)
    labels[torch.rand(batch, height, width, generator=g) < ignore_frac] = IGNORE
    return labels


@pytest.mark.parametrize("dice_weight", [0.0, 2.0])
def test_loss_ignores_ignored_pixels(dice_weight):
    loss_fn = PixelSegmentationLoss(num_classes=4, dice_weight=dice_weight)
    labels = _labels(2, 12, 20, 4, ignore_frac=0.3)
    logits = torch.randn(2, 4, 12, 20)
    base = loss_fn(logits, labels)
    assert set(base) == ({"loss_ce", "loss_dice"} if dice_weight > 0 else {"loss_ce"})
    ignored = (labels == IGNORE).unsqueeze(1).expand_as(logits)
    changed = torch.where(ignored, torch.randn_like(logits) * 50, logits)
    assert not torch.equal(changed, logits)
    for key, value in loss_fn(changed, labels).items():
        torch.testing.assert_close(value, base[key])
    # CE equals the mean over valid pixels.
    expected = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    torch.testing.assert_close(base["loss_ce"], expected)


def test_loss_weights_dice_value_and_upsampling():
    labels = _labels(2, 16, 24, 3, ignore_frac=0.2)
    logits = torch.randn(2, 3, 4, 6)
    plain = PixelSegmentationLoss(num_classes=3, dice_weight=1.0)(logits, labels)
    weighted_loss = PixelSegmentationLoss(num_classes=3, ce_weight=2.0, dice_weight=3.0)
    # losses come unweighted; the weights are for the meta-architecture to apply
    assert weighted_loss.weight_dict == {"loss_ce": 2.0, "loss_dice": 3.0}
    for key, value in weighted_loss(logits, labels).items():
        torch.testing.assert_close(value, plain[key])
    # Logits are upsampled bilinearly to the label size; dice checked against a one-hot computation.
    up = F.interpolate(logits, size=(16, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(plain["loss_ce"], F.cross_entropy(up, labels, ignore_index=IGNORE))
    valid = (labels != IGNORE).unsqueeze(1).float()
    probs = up.softmax(1) * valid
    onehot = F.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2).float() * valid
    dice = 1 - (2 * (probs * onehot).sum((0, 2, 3)) + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    torch.testing.assert_close(plain["loss_dice"], dice.mean())


def test_loss_all_ignore_is_finite_zero_with_grad():
    loss_fn = PixelSegmentationLoss(num_classes=4, dice_weight=1.0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    losses = loss_fn(logits, torch.full((2, 8, 8), IGNORE, dtype=torch.long))
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() == 0.0
    assert total.grad_fn is not None
    total.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_loss_bad_inputs():
    loss_fn = PixelSegmentationLoss(num_classes=4)
    logits = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="outside"):
        loss_fn(logits, torch.full((2, 8, 8), 4, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        loss_fn(logits, torch.zeros(2, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="logits"):
        loss_fn(torch.randn(2, 5, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_value"):
        PixelSegmentationLoss(num_classes=4, ignore_value=2)


def test_tiny_upernet_overfits_fixed_labels():
    torch.manual_seed(0)
    in_channels = (8, 8, 8, 8)
    features = _pyramid(2, 64, 96, in_channels, seed=1)
    labels = _labels(2, 16, 24, 4, ignore_frac=0.1, seed=2)  # at the logits' (H/4) resolution
    head = UPerNetHead(in_channels=in_channels, num_classes=4, channels=32, norm="GN", dropout=0.0)
    loss_fn = PixelSegmentationLoss(num_classes=4, dice_weight=0.5)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        loss = sum(loss_fn(head(features), labels).values())
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = head(features)
        final = sum(loss_fn(logits, labels).values()).item()
    valid = labels != IGNORE
    accuracy = (logits.argmax(1)[valid] == labels[valid]).float().mean().item()
    assert final < first / 5, (first, final)
    assert accuracy > 0.95, accuracy

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dinov3_m2f.modeling.criterion import SetCriterion, make_weight_dict, weighted_dice, weighted_sigmoid_ce
from dinov3_m2f.modeling.matcher import HungarianMatcher
from dinov3_m2f.modeling.targets import prepare_targets, semseg_to_targets

NUM_CLASSES = 4
NUM_AUX = 2
QUERIES = 5


def _criterion(num_points=300):
    return SetCriterion(
        num_classes=NUM_CLASSES,
        matcher=HungarianMatcher(num_points=num_points),
        weight_dict=make_weight_dict(num_aux_layers=NUM_AUX),
        num_points=num_points,
    )


def _outputs(batch, size, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def layer():
        out = {
            "pred_logits": torch.randn(batch, QUERIES, NUM_CLASSES + 1, generator=g),
            "pred_masks": 2 * torch.randn(batch, QUERIES, *size, generator=g),
        }
        return {k: v.requires_grad_(requires_grad) for k, v in out.items()}

    outputs = layer()
    outputs["aux_outputs"] = [layer() for _ in range(NUM_AUX)]
    return outputs


def _sem_segs(seed=0):
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(0, NUM_CLASSES, (4, 4), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)
    first[2:7, 3:12] = 255  # an ignore region
    second = torch.randint(0, NUM_CLASSES, (12, 10), generator=g)
    return [first, second]  # second is padded to 16 x 16


def _targets(sem_segs):
    """Targets of the label maps padded to 16 x 16 with the ignore value."""
    padded = [F.pad(s, (0, 16 - s.shape[1], 0, 16 - s.shape[0]), value=255) for s in sem_segs]
    return prepare_targets(padded, num_classes=NUM_CLASSES)


def _losses(criterion, outputs, targets, seed=0):
    torch.manual_seed(seed)  # same points for matcher and losses on every call
    return criterion(outputs, targets)


def test_keys_and_weight_dict():
    criterion = _criterion()
    losses = _losses(criterion, _outputs(2, (8, 8)), _targets(_sem_segs()))
    expected = {"loss_ce", "loss_mask", "loss_dice"}
    expected |= {f"{k}_{i}" for k in ("loss_ce", "loss_mask", "loss_dice") for i in range(NUM_AUX)}
    assert set(losses) == expected
    assert set(criterion.weight_dict) == expected
    assert criterion.weight_dict["loss_ce_1"] == 2.0 and criterion.weight_dict["loss_dice"] == 5.0
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert all(v > 0 for v in losses.values())


def test_ignore_and_padding_pixels_do_not_change_losses():
    criterion = _criterion()
    targets = _targets(_sem_segs())
    outputs = _outputs(2, (16, 16))  # predictions at the target resolution
    reference = _losses(criterion, outputs, targets)

    invalid = torch.stack([~t["valid"] for t in targets])  # [B, H, W]
    assert invalid[0].any() and invalid[1].any()

    def perturb(out, value):
        masks = out["pred_masks"].clone()
        masks.permute(1, 0, 2, 3)[:, invalid] = value
        return {"pred_logits": out["pred_logits"], "pred_masks": masks}

    changed = perturb(outputs, 30.0)
    changed["aux_outputs"] = [perturb(aux, -30.0) for aux in outputs["aux_outputs"]]
    result = _losses(criterion, changed, targets)
    for key in reference:
        torch.testing.assert_close(result[key], reference[key], rtol=0, atol=0, msg=key)

    # Control: the same change on valid pixels does change the mask losses.
    valid_changed = {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"].clone()}
    valid_changed["pred_masks"].permute(1, 0, 2, 3)[:, ~invalid] = 30.0
    valid_changed["aux_outputs"] = outputs["aux_outputs"]
    result = _losses(criterion, valid_changed, targets)
    assert not torch.isclose(result["loss_mask"], reference["loss_mask"])


def test_all_ignore_image():
    criterion = _criterion()
    empty = torch.full((16, 16), 255)
    losses = _losses(criterion, _outputs(1, (8, 8)), _targets([empty]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_dice_1"] == 0
    assert losses["loss_ce"] > 0

    sem_segs = _sem_segs()
    mixed = _losses(criterion, _outputs(2, (8, 8)), _targets([sem_segs[0], empty]))
    assert all(torch.isfinite(v) for v in mixed.values())
    assert mixed["loss_mask"] > 0


def test_loss_ce_all_no_object():
    criterion = _criterion()
    outputs = _outputs(1, (8, 8))
    losses = _losses(criterion, outputs, _targets([torch.full((16, 16), 255)]))
    expected = -F.log_softmax(outputs["pred_logits"], -1)[..., -1].mean()
    torch.testing.assert_close(losses["loss_ce"], expected)


def test_gradients_flow():
    criterion = _criterion()
    outputs = _outputs(2, (8, 8), requires_grad=True)
    losses = _losses(criterion, outputs, _targets(_sem_segs()))
    total = sum(criterion.weight_dict[k] * v for k, v in losses.items())
    total.backward()
    for layer in [outputs] + outputs["aux_outputs"]:
        assert layer["pred_logits"].grad is not None and layer["pred_logits"].grad.abs().sum() > 0
        assert layer["pred_masks"].grad is not None and layer["pred_masks"].grad.abs().sum() > 0

    empty_outputs = _outputs(1, (8, 8), requires_grad=True)
    losses = _losses(criterion, empty_outputs, _targets([torch.full((16, 16), 255)]))
    sum(losses.values()).backward()
    assert torch.equal(empty_outputs["pred_masks"].grad, torch.zeros_like(empty_outputs["pred_masks"]))
    assert empty_outputs["pred_logits"].grad.abs().sum() > 0


def test_weighted_point_losses_match_subset():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=g)
    labels = (torch.rand(3, 20, generator=g) > 0.5).float()
    weights = torch.zeros(3, 20)
    weights[0, :7] = 1
    weights[1, 5:] = 1  # mask 2 has no valid point
    bce = weighted_sigmoid_ce(logits, labels, weights)
    dice = weighted_dice(logits, labels, weights)
    for i, sel in ((0, slice(0, 7)), (1, slice(5, 20))):
        x, t = logits[i, sel], labels[i, sel]
        torch.testing.assert_close(bce[i], F.binary_cross_entropy_with_logits(x, t))
        p = x.sigmoid()
        torch.testing.assert_close(dice[i], 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    assert bce[2] == 0 and dice[2] == 0


def test_num_masks_with_process_group(tmp_path):
    criterion = _criterion()
    outputs, targets = _outputs(2, (8, 8)), _targets(_sem_segs())
    reference = _losses(criterion, outputs, targets)
    assert not dist.is_initialized()
    store = f"file://{os.fspath(tmp_path / 'store')}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        assert SetCriterion._num_masks(targets, torch.device("cpu")) == sum(len(t["labels"]) for t in targets)
        losses = _losses(criterion, outputs, targets)
    finally:
        dist.destroy_process_group()
    for key in reference:
        torch.testing.assert_close(losses[key], reference[key])


def test_errors():
    criterion = SetCriterion(
        num_classes=NUM_CLASSES,
        matcher=HungarianMatcher(num_points=16),
        weight_dict={"loss_ce": 1.0},
        num_points=16,
    )
    with pytest.raises(KeyError, match="loss_mask"):
        _losses(criterion, _outputs(2, (8, 8)), _targets(_sem_segs()))
    unpadded = [semseg_to_targets(s, num_classes=NUM_CLASSES) for s in _sem_segs()]
    with pytest.raises(ValueError, match="different sizes"):
        _losses(_criterion(), _outputs(2, (8, 8)), unpadded)

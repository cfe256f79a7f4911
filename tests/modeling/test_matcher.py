import itertools

import pytest
import torch

from dinov3_m2f.modeling.matcher import HungarianMatcher
from dinov3_m2f.modeling.targets import semseg_to_targets

NUM_CLASSES = 5


def _random_problem(seed, *, batch=2, queries=4, size=8):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, NUM_CLASSES + 1, generator=g),
        "pred_masks": 3 * torch.randn(batch, queries, size // 2, size // 2, generator=g),
    }
    targets = []
    for _ in range(batch):
        sem_seg = torch.randint(0, 3, (size, size), generator=g) * 2  # classes {0, 2, 4}
        sem_seg[: size // 4] = 255
        targets.append(semseg_to_targets(sem_seg, num_classes=NUM_CLASSES))
    return outputs, targets


def _brute_force_min(cost):
    q, k = cost.shape
    return min(sum(cost[perm[j], j].item() for j in range(k)) for perm in itertools.permutations(range(q), k))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assignment_is_optimal(seed):
    # Costs are random through the sampled points; drawing the same points for the reference
    # cost matrices (same global seed, same order of draws) makes the comparison exact.
    matcher = HungarianMatcher(num_points=64)
    outputs, targets = _random_problem(seed)
    torch.manual_seed(seed)
    costs = [
        matcher.cost_matrix(outputs["pred_logits"][b], outputs["pred_masks"][b], t)
        for b, t in enumerate(targets)
    ]
    torch.manual_seed(seed)
    indices = matcher(outputs, targets)
    assert len(indices) == 2
    for cost, (pred_idx, tgt_idx), target in zip(costs, indices, targets):
        k = len(target["labels"])
        assert cost.shape == (4, k)
        assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64
        assert sorted(tgt_idx.tolist()) == list(range(k))
        assert len(set(pred_idx.tolist())) == k
        achieved = cost[pred_idx, tgt_idx].sum().item()
        assert achieved == pytest.approx(_brute_force_min(cost), abs=1e-5)


def test_recovers_obvious_permutation():
    sem_seg = torch.zeros(16, 16, dtype=torch.long)
    sem_seg[:, 8:] = 3
    sem_seg[8:, :8] = 1
    target = semseg_to_targets(sem_seg, num_classes=NUM_CLASSES)  # labels [0, 1, 3]
    perm = [2, 0, 4]  # query perm[k] predicts target k; queries 1, 3 predict nothing
    pred_logits = torch.full((1, 5, NUM_CLASSES + 1), -5.0)
    pred_logits[0, :, -1] = 5.0
    pred_masks = torch.full((1, 5, 16, 16), -8.0)
    for k, q in enumerate(perm):
        pred_logits[0, q, target["labels"][k]] = 5.0
        pred_logits[0, q, -1] = -5.0
        pred_masks[0, q][target["masks"][k].bool()] = 8.0
    torch.manual_seed(0)
    ((pred_idx, tgt_idx),) = HungarianMatcher(num_points=256)(
        {"pred_logits": pred_logits, "pred_masks": pred_masks}, [target]
    )
    assert dict(zip(tgt_idx.tolist(), pred_idx.tolist())) == {0: 2, 1: 0, 2: 4}


def test_ignore_pixels_do_not_change_costs():
    outputs, targets = _random_problem(3, batch=1, size=16)
    outputs["pred_masks"] = torch.randn(1, 4, 16, 16)  # predictions at the target resolution
    matcher = HungarianMatcher(num_points=500)
    torch.manual_seed(7)
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0])
    changed = outputs["pred_masks"].clone()
    changed[0][:, ~targets[0]["valid"]] = 50.0
    torch.manual_seed(7)
    cost_changed = matcher.cost_matrix(outputs["pred_logits"][0], changed[0], targets[0])
    torch.testing.assert_close(cost, cost_changed, rtol=0, atol=0)
    # Changing valid pixels does change the costs (the check above can fail).
    changed[0][:, targets[0]["valid"]] = 50.0
    torch.manual_seed(7)
    cost_valid_changed = matcher.cost_matrix(outputs["pred_logits"][0], changed[0], targets[0])
    assert not torch.allclose(cost, cost_valid_changed)


def test_empty_targets():
    outputs, _ = _random_problem(0, batch=2)
    empty = semseg_to_targets(torch.full((8, 8), 255), num_classes=NUM_CLASSES)
    one = semseg_to_targets(torch.zeros(8, 8, dtype=torch.long), num_classes=NUM_CLASSES)
    indices = HungarianMatcher(num_points=32)(outputs, [empty, one])
    assert indices[0][0].shape == (0,) and indices[0][0].dtype == torch.int64
    assert indices[0][1].shape == (0,) and indices[0][1].dtype == torch.int64
    assert indices[1][1].tolist() == [0] and len(indices[1][0]) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_outputs(dtype):
    outputs, targets = _random_problem(5)
    matcher = HungarianMatcher(num_points=64)
    torch.manual_seed(0)
    logits, masks = outputs["pred_logits"][0].to(dtype), outputs["pred_masks"][0].to(dtype)
    cost = matcher.cost_matrix(logits, masks, targets[0])
    assert cost.dtype == torch.float32
    torch.manual_seed(0)
    reference = matcher.cost_matrix(
        outputs["pred_logits"][0].to(dtype).float(), outputs["pred_masks"][0].to(dtype).float(), targets[0]
    )
    torch.testing.assert_close(cost, reference)
    half_outputs = {k: v.to(dtype) for k, v in outputs.items()}
    indices = matcher(half_outputs, targets)
    assert [len(i) for i, _ in indices] == [len(t["labels"]) for t in targets]


def test_errors():
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0)
    outputs, targets = _random_problem(0)
    with pytest.raises(ValueError, match="targets"):
        HungarianMatcher(num_points=16)(outputs, targets[:1])
    outputs["pred_masks"][0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="not finite"):
        HungarianMatcher(num_points=16)(outputs, targets)

"""Hungarian matching between predicted masks (queries) and per-class target masks.

The cost of pairing query ``q`` with target ``k`` is

    cost_class * (-p_q(label_k)) + cost_mask * BCE(q, k) + cost_dice * Dice(q, k)

where ``p_q`` is the softmax class distribution of the query and the two mask terms are measured
at one shared set of uniformly random points per image. Unlike the original Mask2Former
matcher, points that are invalid (ignore or padding, see :mod:`.point_sampling`) are left out of
the mask terms. The assignment minimizing the total cost is found with
``scipy.optimize.linear_sum_assignment``.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import point_sample, sample_valid_points

__all__ = ["HungarianMatcher", "pairwise_sigmoid_ce", "pairwise_dice"]

# Added to the numerator and denominator of every Dice ratio in this package (matching cost, mask
# loss, per-pixel loss), so that empty masks and absent classes stay finite.
DICE_SMOOTH = 1.0


def pairwise_sigmoid_ce(
    pred_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted mean sigmoid cross-entropy between every prediction and every target.

    Args:
        pred_logits: [Q, P] mask logits at P points.
        targets: [K, P] target values in [0, 1] at the same points.
        weights: [P] per-point weights (1 = counted, 0 = ignored).

    Returns:
        [Q, K] cost; 0 where no point has weight.
    """
    loss_if_one = F.softplus(-pred_logits) * weights  # [Q, P], BCE against target 1
    loss_if_zero = F.softplus(pred_logits) * weights  # [Q, P], BCE against target 0
    cost = loss_if_one @ targets.T + loss_if_zero @ (1.0 - targets).T  # [Q, K]
    return cost / weights.sum().clamp(min=1.0)


def pairwise_dice(pred_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted Dice loss between every prediction and every target.

    Args:
        pred_logits: [Q, P] mask logits at P points.
        targets: [K, P] target values in [0, 1] at the same points.
        weights: [P] per-point weights (1 = counted, 0 = ignored).

    Returns:
        [Q, K] cost in [0, 1]; 0 where no point has weight.
    """
    probs = pred_logits.sigmoid() * weights  # [Q, P]
    numerator = 2.0 * probs @ targets.T  # [Q, K]
    denominator = probs.sum(-1)[:, None] + (targets * weights).sum(-1)[None, :]  # [Q, K]
    return 1.0 - (numerator + DICE_SMOOTH) / (denominator + DICE_SMOOTH)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets, per image.

    Args:
        cost_class: weight of the classification cost.
        cost_mask: weight of the sigmoid cross-entropy mask cost.
        cost_dice: weight of the Dice mask cost.
        num_points: number of random points per image for the mask costs.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one of cost_class, cost_mask, cost_dice must be non-zero")
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(
        self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, target: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Matching cost of one image, in float32.

        Draws ``num_points`` uniform points from the global torch RNG (none when the image
        has no target).

        Args:
            pred_logits: [Q, C + 1] class logits.
            pred_masks: [Q, h, w] mask logits.
            target: dict with "labels" [K], "masks" [K, H, W], "valid" [H, W]
                (see :func:`dinov3_m2f.modeling.targets.semseg_to_targets`).

        Returns:
            [Q, K] float32 cost on the device of the predictions.
        """
        labels = target["labels"]
        num_queries = pred_logits.shape[0]
        if labels.numel() == 0:
            return pred_logits.new_zeros((num_queries, 0), dtype=torch.float32)
        device = pred_logits.device
        class_probs = pred_logits.float().softmax(-1)  # [Q, C + 1]
        cost_class = -class_probs[:, labels.to(device)]  # [Q, K]

        # One set of points shared by all queries and targets of the image.
        coords = torch.rand(1, self.num_points, 2, device=device)  # [1, P, 2]
        tgt_points = point_sample(target["masks"].to(device, torch.float32)[None], coords)[0]  # [K, P]
        pred_points = point_sample(pred_masks.float()[None], coords)[0]  # [Q, P]
        weights = sample_valid_points(target["valid"].to(device)[None], coords)[0].float()  # [P]

        cost = (
            self.cost_class * cost_class
            + self.cost_mask * pairwise_sigmoid_ce(pred_points, tgt_points, weights)
            + self.cost_dice * pairwise_dice(pred_points, tgt_points, weights)
        )
        return cost  # [Q, K]

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match the queries of every image to its targets.

        Args:
            outputs: dict with "pred_logits" [B, Q, C + 1] and "pred_masks" [B, Q, h, w]
                (any float dtype; costs are computed in float32).
            targets: B dicts from :func:`dinov3_m2f.modeling.targets.semseg_to_targets`,
                masks at the (padded) input resolution.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors of length ``min(Q, K)``;
            query ``pred_idx[i]`` is matched to target ``tgt_idx[i]``.

        Raises:
            ValueError: batch sizes differ.
            RuntimeError: the cost matrix is not finite (NaN/inf predictions).
        """
        pred_logits = outputs["pred_logits"]  # [B, Q, C + 1]
        pred_masks = outputs["pred_masks"]  # [B, Q, h, w]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"got {len(targets)} targets for a batch of {pred_logits.shape[0]} predictions"
            )
        costs = [self.cost_matrix(pred_logits[b], pred_masks[b], t) for b, t in enumerate(targets)]  # [Q, K_b]
        # One device-to-host copy (and sync) for the whole batch.
        host = torch.cat([c.flatten() for c in costs]).cpu().split([c.numel() for c in costs])
        indices = []
        for b, (flat, device_cost) in enumerate(zip(host, costs)):
            cost = flat.view(device_cost.shape)  # [Q, K_b] on the CPU
            if not torch.isfinite(cost).all():
                raise RuntimeError(f"matching cost of image {b} is not finite; check the predictions")
            pred_idx, tgt_idx = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64))
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )

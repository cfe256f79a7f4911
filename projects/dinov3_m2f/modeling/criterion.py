"""Mask2Former set criterion for semantic segmentation, with ignore/padding pixels excluded.

For each decoder layer (the final output and every entry of ``aux_outputs``):
    1. queries are matched to targets by :class:`HungarianMatcher`;
    2. ``loss_ce``: cross-entropy of every query's class logits, unmatched queries supervised
       towards the no-object class (down-weighted by ``eos_coef``);
    3. ``loss_mask`` / ``loss_dice``: sigmoid cross-entropy and Dice loss of matched masks, at
       importance-sampled points. Each point is weighted by its validity (see
       :mod:`.point_sampling`), so ignore and padding pixels count nowhere; the cross-entropy is
       the mean over the valid points of a mask. Both are summed over masks and divided by the
       number of target masks (averaged over processes in distributed training).
Losses are returned unweighted; ``weight_dict`` holds the weight of every key. Non-finite
predictions (a diverging run) cannot be matched: every loss is then NaN, without matching, so the
training loop stops with its own error naming the iteration.
"""
import logging
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .matcher import DICE_SMOOTH
from .point_sampling import logit_uncertainty, point_sample, sample_uncertain_points, sample_valid_points

logger = logging.getLogger(__name__)

__all__ = ["SetCriterion", "make_weight_dict", "weighted_sigmoid_ce", "weighted_dice"]

# The keys of the losses of one decoder layer: classification, then the two mask losses.
LOSS_KEYS = ("loss_ce", "loss_mask", "loss_dice")


def make_weight_dict(
    *,
    num_aux_layers: int,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> Dict[str, float]:
    """Loss weights for the final layer and ``num_aux_layers`` deep-supervision layers.

    Args:
        num_aux_layers: number of entries of ``outputs["aux_outputs"]``.
        class_weight: weight of ``loss_ce*``.
        mask_weight: weight of ``loss_mask*``.
        dice_weight: weight of ``loss_dice*``.

    Returns:
        {"loss_ce": class_weight, "loss_mask": ..., "loss_dice": ..., "loss_ce_0": ..., ...}
    """
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    for i in range(num_aux_layers):
        weights.update({f"{key}_{i}": value for key, value in base.items()})
    return weights


def weighted_sigmoid_ce(
    point_logits: torch.Tensor, point_labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-mask sigmoid cross-entropy, averaged over the points with weight.

    Args:
        point_logits: [N, P] logits.
        point_labels: [N, P] targets in [0, 1].
        weights: [N, P] point weights (0 = not counted).

    Returns:
        [N] losses; 0 for a mask without weighted points.
    """
    loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")  # [N, P]
    return (loss * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)


def weighted_dice(
    point_logits: torch.Tensor, point_labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-mask Dice loss over the points with weight: [N] losses, 0 for a mask without weighted
    points (arguments of :func:`weighted_sigmoid_ce`)."""
    probs = point_logits.sigmoid() * weights  # [N, P]
    labels = point_labels * weights  # [N, P]
    numerator = 2.0 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    return 1.0 - (numerator + DICE_SMOOTH) / (denominator + DICE_SMOOTH)


class SetCriterion(nn.Module):
    """Losses of Mask2Former for semantic segmentation.

    Args:
        num_classes: number of foreground classes (the no-object class is ``num_classes``).
        matcher: module mapping (outputs, targets) to per-image (pred_idx, tgt_idx) pairs.
        weight_dict: weight of every loss key this criterion returns (see
            :func:`make_weight_dict`); stored for the caller, not applied here.
        eos_coef: classification weight of the no-object class.
        num_points: points per matched mask for the mask losses.
        oversample_ratio: candidate pool size for importance sampling, relative to num_points.
        importance_sample_ratio: share of points chosen by uncertainty (``-|logit|``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("empty_weight", class_weight, persistent=False)

    def loss_labels(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: Sequence[Dict[str, torch.Tensor]],
        indices: List[Tuple[torch.Tensor, torch.Tensor]],
    ) -> Dict[str, torch.Tensor]:
        """Cross-entropy over all queries; unmatched queries target the no-object class."""
        logits = outputs["pred_logits"].float()  # [B, Q, C + 1]
        batch_idx, src_idx = self._src_index(indices, logits.device)
        matched_labels = torch.cat(
            [t["labels"].to(logits.device)[tgt] for t, (_, tgt) in zip(targets, indices)]
        )  # [N]
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )  # [B, Q]
        target_classes[batch_idx, src_idx] = matched_labels
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def loss_masks(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: Sequence[Dict[str, torch.Tensor]],
        indices: List[Tuple[torch.Tensor, torch.Tensor]],
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        """Sigmoid cross-entropy and Dice of matched masks at valid importance-sampled points."""
        pred_masks = outputs["pred_masks"]  # [B, Q, h, w]
        device = pred_masks.device
        batch_idx, src_idx = self._src_index(indices, device)
        if src_idx.numel() == 0:
            # Keep the graph connected (zero gradient) so DDP sees every parameter used.
            zero = pred_masks.float().sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        self._check_same_size(targets)
        src_masks = pred_masks[batch_idx, src_idx].float()[:, None]  # [N, 1, h, w]
        tgt_masks = torch.cat(
            [t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices)]
        ).to(device, torch.float32)[:, None]  # [N, 1, H, W]
        valid = torch.stack([t["valid"] for t in targets]).to(device)[batch_idx]  # [N, H, W]

        with torch.no_grad():
            coords = sample_uncertain_points(
                src_masks,
                logit_uncertainty,
                num_points=self.num_points,
                oversample_ratio=self.oversample_ratio,
                importance_sample_ratio=self.importance_sample_ratio,
                valid=valid,
            )  # [N, P, 2]
            point_labels = point_sample(tgt_masks, coords)[:, 0]  # [N, P]
            point_weights = sample_valid_points(valid, coords).float()  # [N, P]
        point_logits = point_sample(src_masks, coords)[:, 0]  # [N, P]

        return {
            "loss_mask": weighted_sigmoid_ce(point_logits, point_labels, point_weights).sum() / num_masks,
            "loss_dice": weighted_dice(point_logits, point_labels, point_weights).sum() / num_masks,
        }

    def forward(
        self, outputs: Dict[str, object], targets: Sequence[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """Compute the unweighted losses.

        Args:
            outputs: dict with "pred_logits" [B, Q, C + 1], "pred_masks" [B, Q, h, w] and
                optionally "aux_outputs", a list of dicts with the same two keys.
            targets: B dicts from :func:`dinov3_m2f.modeling.targets.semseg_to_targets`, all at
                the same (padded) size.

        Returns:
            dict of scalar losses: "loss_ce", "loss_mask", "loss_dice" for the final layer and
            the same keys with suffix ``_{i}`` for ``aux_outputs[i]``; all NaN when a prediction
            holds NaN or Inf (nothing is matched).

        Raises:
            KeyError: a returned loss has no entry in ``weight_dict``.
        """
        # every process all-reduces the mask count, whether its predictions are finite or not
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        layers = [("", outputs)]
        layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", ()))]
        finite = torch.stack(
            [torch.isfinite(layer[key]).all() for _, layer in layers for key in ("pred_logits", "pred_masks")]
        ).all()
        if not finite:
            logger.warning("Non-finite predictions (NaN or Inf): no matching, every loss is NaN")
            nan = torch.full((), float("nan"), device=outputs["pred_logits"].device)
            losses = {key + suffix: nan for suffix, _ in layers for key in LOSS_KEYS}
        else:
            losses = {}
            for suffix, layer in layers:
                losses.update(self._layer_losses(layer, targets, num_masks, suffix=suffix))
        missing = sorted(set(losses) - set(self.weight_dict))
        if missing:
            raise KeyError(f"weight_dict has no weight for losses {missing}")
        return losses

    def _layer_losses(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: Sequence[Dict[str, torch.Tensor]],
        num_masks: float,
        *,
        suffix: str,
    ) -> Dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses = dict(self.loss_labels(outputs, targets, indices))
        losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return {key + suffix: value for key, value in losses.items()}

    @staticmethod
    def _num_masks(targets: Sequence[Dict[str, torch.Tensor]], device: torch.device) -> float:
        """Number of target masks, averaged over processes, at least 1."""
        num_masks = torch.tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float32, device=device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            num_masks = num_masks / dist.get_world_size()
        return num_masks.clamp(min=1.0).item()

    @staticmethod
    def _src_index(
        indices: List[Tuple[torch.Tensor, torch.Tensor]], device: torch.device
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(image index, query index) of every matched prediction."""
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx.to(device), src_idx.to(device)

    @staticmethod
    def _check_same_size(targets: Sequence[Dict[str, torch.Tensor]]) -> None:
        sizes = {tuple(t["valid"].shape) for t in targets}
        if len(sizes) > 1:
            raise ValueError(
                f"targets have different sizes {sorted(sizes)}; pad the label maps to one size "
                "with the ignore value before prepare_targets"
            )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )

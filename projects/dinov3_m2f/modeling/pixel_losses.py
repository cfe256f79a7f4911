"""Per-pixel semantic segmentation loss for dense heads (UPerNet, linear): cross-entropy + optional dice."""

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from .matcher import DICE_SMOOTH

__all__ = ["PixelSegmentationLoss"]


class PixelSegmentationLoss(nn.Module):
    """Cross-entropy (mean over non-ignored pixels) plus optional multi-class soft dice.

    Like :class:`~dinov3_m2f.modeling.criterion.SetCriterion`, it returns unweighted losses and
    holds their weights in ``weight_dict``; the meta-architecture applies them.

    Logits are upsampled bilinearly (``align_corners=False``) to the label resolution and computed
    in float32. Pixels labelled ``ignore_value`` (including padding) contribute to neither term. When
    every pixel is ignored both terms are an exact zero that still carries a ``grad_fn``, so
    ``backward()`` works and yields zero gradients.

    Dice: with ``p`` the softmax probabilities and ``t`` the one-hot labels, restricted to valid
    pixels of the whole batch, per class ``c``:
    ``1 - (2 * sum(p_c * t_c) + 1) / (sum(p_c) + sum(t_c) + 1)``, averaged over all classes.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        ignore_value: int = 255,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
    ):
        """
        Args:
            num_classes: number of classes; labels must be in ``[0, num_classes)`` or ``ignore_value``.
            ignore_value: label of pixels excluded from the loss.
            ce_weight: weight of the cross-entropy term (``weight_dict["loss_ce"]``).
            dice_weight: weight of the dice term; 0 disables it (no ``"loss_dice"`` key).
        """
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if 0 <= ignore_value < num_classes:
            raise ValueError(f"ignore_value={ignore_value} collides with a class id (num_classes={num_classes})")
        if ce_weight < 0 or dice_weight < 0:
            raise ValueError(f"ce_weight and dice_weight must be >= 0, got {ce_weight} and {dice_weight}")
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.weight_dict = {"loss_ce": ce_weight, "loss_dice": dice_weight}

    def _check_inputs(self, logits: torch.Tensor, sem_seg: torch.Tensor) -> None:
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [B, {self.num_classes}, h, w], got {tuple(logits.shape)}")
        if sem_seg.dim() != 3 or sem_seg.shape[0] != logits.shape[0]:
            raise ValueError(f"sem_seg must be [B={logits.shape[0]}, H, W], got {tuple(sem_seg.shape)}")
        if sem_seg.dtype != torch.int64:
            raise TypeError(f"sem_seg must be int64 (long), got {sem_seg.dtype}")

    def _dice(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # logits [B, C, H, W] float32; target [B, H, W] in [0, C) (0 at ignored pixels); valid [B, H, W]
        probs = logits.softmax(dim=1) * valid.unsqueeze(1)  # [B, C, H, W], zero at ignored pixels
        p_true = probs.gather(1, target.unsqueeze(1)).flatten()  # [B*H*W], prob of the true class
        flat_target = target.flatten()  # [B*H*W]
        zeros = probs.new_zeros(self.num_classes)
        intersection = zeros.scatter_add(0, flat_target, p_true)  # [C], sum(p_c * t_c)
        target_sum = zeros.scatter_add(0, flat_target, valid.flatten().to(probs.dtype))  # [C], sum(t_c)
        prob_sum = probs.sum(dim=(0, 2, 3))  # [C], sum(p_c)
        dice = (2.0 * intersection + DICE_SMOOTH) / (prob_sum + target_sum + DICE_SMOOTH)  # [C]
        return (1.0 - dice).mean()

    def forward(self, logits: torch.Tensor, sem_seg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: ``[B, num_classes, h, w]`` raw class scores (any resolution).
            sem_seg: ``[B, H, W]`` int64 labels, ``ignore_value`` at ignored / padding pixels.

        Returns:
            ``{"loss_ce": CE}`` plus ``"loss_dice": dice`` when ``dice_weight > 0``, unweighted
            (``weight_dict`` holds the weights).
        """
        self._check_inputs(logits, sem_seg)
        logits = logits.float()
        if logits.shape[-2:] != sem_seg.shape[-2:]:
            logits = F.interpolate(logits, size=sem_seg.shape[-2:], mode="bilinear", align_corners=False)
        # logits: [B, C, H, W]
        valid = sem_seg != self.ignore_value  # [B, H, W]
        if bool((valid & ((sem_seg < 0) | (sem_seg >= self.num_classes))).any()):
            raise ValueError(
                f"sem_seg has labels outside [0, {self.num_classes}) that are not ignore_value={self.ignore_value}"
            )
        num_valid = valid.sum().clamp(min=1)  # avoids 0/0 on an all-ignore batch
        ce_sum = F.cross_entropy(logits, sem_seg, ignore_index=self.ignore_value, reduction="sum")
        losses = {"loss_ce": ce_sum / num_valid}
        if self.weight_dict["loss_dice"] > 0:
            target = torch.where(valid, sem_seg, torch.zeros_like(sem_seg))  # [B, H, W]
            losses["loss_dice"] = self._dice(logits, target, valid)
        return losses

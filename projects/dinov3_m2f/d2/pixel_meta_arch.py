"""Detectron2 meta-architecture for per-pixel decode heads (UPerNet, linear) on a frozen DINOv3
backbone, trained with a per-pixel loss and evaluated exactly like Mask2Former."""
import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import ImageList
from torch import nn

from .meta_arch import DINOv3SemSegBase

logger = logging.getLogger(__name__)

__all__ = ["DINOv3PixelSegmentor"]


@META_ARCH_REGISTRY.register()
class DINOv3PixelSegmentor(DINOv3SemSegBase):
    """Backbone features -> per-pixel logits head -> per-pixel loss.

    The head receives the backbone features named by ``in_features`` as a list (in that order)
    and returns logits ``[B, C, h, w]`` at any resolution (UPerNet: stride 4 of the adapter's
    ``res2..res5``; linear: stride 16 of the ViT's last blocks). Logits are resized bilinearly to
    the padded input for inference and by the criterion for training. Input/output dicts, test
    modes and normalization are those of :class:`DINOv3SemSegBase`.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_classes: int,
        in_features: Optional[Sequence[str]] = None,
        **kwargs,
    ):
        """
        Args:
            backbone: ``D2DINOv3Backbone`` (UPerNet) or ``D2DINOv3ViTBackbone`` (linear).
            sem_seg_head: ``UPerNetHead`` / ``LinearHead`` (list of features -> logits).
            criterion: ``PixelSegmentationLoss`` ((logits, labels [B, H, W]) -> weighted losses).
            num_classes: number of semantic classes C.
            in_features: backbone outputs fed to the head, in order; None = all, in the
                backbone's order.
            kwargs: normalization, ignore value and test-mode arguments of
                :class:`DINOv3SemSegBase`.
        """
        super().__init__(
            backbone=backbone, sem_seg_head=sem_seg_head, criterion=criterion,
            num_classes=num_classes, **kwargs,
        )
        available = list(backbone.output_shape())
        in_features = list(in_features) if in_features is not None else available
        unknown = [name for name in in_features if name not in available]
        if unknown or not in_features:
            raise ValueError(
                f"in_features={in_features} must be a non-empty subset of the backbone outputs "
                f"{available} (unknown: {unknown})"
            )
        self.in_features = in_features

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return self.sem_seg_head([features[name] for name in self.in_features])  # [B, C, h, w]

    def _forward_train(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, sem_segs = self._training_batch(batched_inputs)
        labels = ImageList.from_tensors(
            sem_segs,
            self.size_divisibility,
            pad_value=self.ignore_value,
            padding_constraints=self.backbone.padding_constraints,
        ).tensor  # [B, H, W], padding = ignore_value
        if labels.shape[-2:] != images.tensor.shape[-2:]:
            raise ValueError(
                f"label maps pad to {tuple(labels.shape[-2:])} but images to "
                f"{tuple(images.tensor.shape[-2:])}: every 'sem_seg' must match its 'image' size"
            )
        return self.criterion(self._logits(images.tensor), labels)

    def _predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        logits = self._logits(images).float()  # [B, C, h, w]
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)

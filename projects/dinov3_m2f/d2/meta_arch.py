"""Detectron2 meta-architectures for semantic segmentation on a frozen DINOv3 backbone: a shared
base (input dicts, normalization, the one place where images and label maps are padded, loss
weighting, test modes), Mask2Former (set prediction) and per-pixel heads (UPerNet, linear)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from dinov3_m2f.modeling.dinov3 import get_normalization
from dinov3_m2f.modeling.semantic_inference import (check_slide_batch, semantic_probs, slide_inference,
                                                    tta_inference)
from dinov3_m2f.modeling.targets import prepare_targets

__all__ = ["DINOv3Mask2Former", "DINOv3PixelSegmentor", "DINOv3SemSegBase"]

TEST_MODES = ("whole", "slide", "tta")
# Images come as 0..255 pixel values; the normalization presets hold mean/std on the 0..1 scale.
PIXEL_SCALE = 255.0


class DINOv3SemSegBase(nn.Module):
    """Shared part of the semantic-segmentation meta-architectures.

    Input: detectron2 dicts with ``"image"`` ([3, H, W] RGB, 0..255), in training ``"sem_seg"``
    ([H, W] int64, ``ignore_value`` = no label), optionally ``"height"``/``"width"``. Training
    returns the criterion's losses times its ``weight_dict``; inference returns
    ``[{"sem_seg": [C, height, width] scores}]`` (default size: the input's).

    Subclasses implement ``_losses(images [B, 3, H, W], labels [B, H, W])`` (unweighted) and
    ``_predict_scores(images) -> [B, C, h, w]``, for normalized, constraint-sized images.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_classes: int,
        normalization: str = "lvd1689m",
        ignore_value: int = 255,
        test_mode: str = "whole",
        slide_crop_size: Optional[Tuple[int, int]] = None,
        slide_stride: Optional[Tuple[int, int]] = None,
        slide_batch: int = 1,
        tta_scales: Sequence[float] = (1.0,),
        tta_flip: bool = False,
    ):
        """
        Args:
            backbone: a detectron2 Backbone with ``padding_constraints``.
            sem_seg_head: the decode head on the backbone features.
            criterion: the loss of the head's outputs: unweighted losses, and ``weight_dict``.
            num_classes: number of semantic classes C.
            normalization: weight family whose pixel mean/std normalize the input
                (a key of ``dinov3_m2f.modeling.dinov3.NORMALIZATION``: "lvd1689m", "sat493m").
            ignore_value: label of unlabeled pixels; padding gets it too.
            test_mode: "whole" (padded full image), "slide" (windows of ``slide_crop_size``
                every ``slide_stride``) or "tta" (``tta_scales`` x ``tta_flip`` views; each view
                is predicted by sliding windows when ``slide_crop_size`` is set, else whole).
            slide_crop_size, slide_stride: (h, w) sliding-window size and stride.
            slide_batch: sliding windows per forward pass (more: faster on a GPU, that many times
                one window's activation memory; see ``slide_inference``).
            tta_scales, tta_flip: TTA resize ratios; add horizontally flipped views.
        """
        super().__init__()
        mean, std = get_normalization(normalization)
        if not hasattr(criterion, "weight_dict"):
            raise TypeError("criterion must have a weight_dict (the weight of each loss)")
        if test_mode not in TEST_MODES:
            raise ValueError(f"test_mode={test_mode!r} is not one of {TEST_MODES}")
        if test_mode == "slide" and (slide_crop_size is None or slide_stride is None):
            raise ValueError("test_mode='slide' needs slide_crop_size and slide_stride")
        if (slide_crop_size is None) != (slide_stride is None):
            raise ValueError("slide_crop_size and slide_stride must be given together")
        check_slide_batch(slide_batch)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.test_mode = test_mode
        self.slide_crop_size = tuple(slide_crop_size) if slide_crop_size else None
        self.slide_stride = tuple(slide_stride) if slide_stride else None
        self.slide_batch = slide_batch
        self.tta_scales = tuple(tta_scales)
        self.tta_flip = tta_flip
        # Derived from the config, so not stored in checkpoints.
        mean, std = (torch.tensor(v).view(-1, 1, 1) * PIXEL_SCALE for v in (mean, std))  # [3, 1, 1]
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def size_divisibility(self) -> int:
        return self.backbone.padding_constraints["size_divisibility"]

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std  # [3, H, W]

    def forward(self, batched_inputs: List[Dict]) -> object:
        """Weighted losses (training) or ``[{"sem_seg": [C, H, W]}]`` (inference) of detectron2
        dicts (see the class docstring)."""
        if not self.training:
            return [self._inference_one(x) for x in batched_inputs]
        images, labels = self._training_batch(batched_inputs)
        weights = self.criterion.weight_dict
        return {name: loss * weights[name] for name, loss in self._losses(images, labels).items()}

    def _pad(self, tensors: List[torch.Tensor], pad_value: float) -> torch.Tensor:
        """Pad at the bottom/right to one size that meets the backbone's padding constraint."""
        return ImageList.from_tensors(tensors, self.size_divisibility, pad_value=pad_value,
                                      padding_constraints=self.backbone.padding_constraints).tensor

    def _training_batch(self, batched_inputs: List[Dict]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalized images [B, 3, H, W] and label maps [B, H, W] padded with ``ignore_value``."""
        for x in batched_inputs:
            if "sem_seg" not in x:
                raise ValueError("training inputs need a 'sem_seg' label map")
            if x["sem_seg"].shape[-2:] != x["image"].shape[-2:]:
                raise ValueError(
                    f"'sem_seg' of size {tuple(x['sem_seg'].shape)} does not match its 'image' of "
                    f"size {tuple(x['image'].shape[-2:])} ({x.get('file_name', 'no file name')})"
                )
        images = self._pad([self._normalize(x["image"]) for x in batched_inputs], 0.0)
        labels = self._pad([x["sem_seg"].to(self.device) for x in batched_inputs], self.ignore_value)
        return images, labels

    def _predict_padded(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C, h, w] for normalized images [B, 3, h, w] of any size."""
        height, width = images.shape[-2:]
        padded = self._pad(list(images), 0.0)  # [B, 3, h', w'], h' and w' divisible
        return self._predict_scores(padded)[:, :, :height, :width]

    def predict_crops(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C, h, w] of RGB crops [B, 3, h, w] (0..255, any size): normalized and
        padded as in whole-image inference (the windows of block-wise scene inference)."""
        return self._predict_padded(self._normalize(images))

    def _predict_view(self, images: torch.Tensor) -> torch.Tensor:
        """One view: sliding windows when configured, else the padded whole image."""
        if self.slide_crop_size is None:
            return self._predict_padded(images)
        return slide_inference(self._predict_padded, images, crop_size=self.slide_crop_size,
                               stride=self.slide_stride, num_classes=self.num_classes,
                               slide_batch=self.slide_batch)

    def _inference_one(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        image = self._normalize(inputs["image"])[None]  # [1, 3, H, W]
        height, width = image.shape[-2:]
        if self.test_mode == "whole":
            scores = self._predict_padded(image)
        elif self.test_mode == "slide":
            scores = self._predict_view(image)
        else:
            scores = tta_inference(self._predict_view, image, scales=self.tta_scales,
                                   flip=self.tta_flip, size_divisibility=self.size_divisibility)
        out_size = inputs.get("height", height), inputs.get("width", width)
        return {"sem_seg": sem_seg_postprocess(scores[0], (height, width), *out_size)}


class DINOv3Mask2Former(DINOv3SemSegBase):
    """Mask2Former for semantic segmentation: ``D2DINOv3Backbone``, ``Mask2FormerHead`` and
    ``SetCriterion``; arguments, inputs and outputs of :class:`DINOv3SemSegBase`."""

    def _losses(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = self.sem_seg_head(self.backbone(images))
        targets = prepare_targets(labels, num_classes=self.num_classes, ignore_value=self.ignore_value)
        return self.criterion(outputs, targets)

    def _predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.sem_seg_head(self.backbone(images))
        return semantic_probs(
            outputs["pred_logits"], outputs["pred_masks"], output_size=tuple(images.shape[-2:])
        )  # [B, C, h, w]


class DINOv3PixelSegmentor(DINOv3SemSegBase):
    """Backbone features -> per-pixel logits head -> per-pixel loss (``PixelSegmentationLoss``).

    The head gets the features named by ``in_features`` as a list and returns logits
    ``[B, C, h, w]`` at any resolution (UPerNet: stride 4; linear: stride 16), resized bilinearly
    to the input. Other arguments, inputs and outputs: see :class:`DINOv3SemSegBase`.
    """

    def __init__(self, *, in_features: Optional[Sequence[str]] = None, **kwargs):
        """
        Args:
            in_features: backbone outputs fed to the head, in order; None = all of them.
            kwargs: the arguments of :class:`DINOv3SemSegBase`.
        """
        super().__init__(**kwargs)
        available = list(self.backbone.output_shape())
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

    def _losses(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.criterion(self._logits(images), labels)

    def _predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        logits = self._logits(images).float()  # [B, C, h, w]
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)

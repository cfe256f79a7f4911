"""Detectron2 meta-architectures on a frozen DINOv3 backbone: the shared semantic-segmentation base
(input normalization, padding, whole-image / sliding-window / TTA inference, resizing to the
original size) and the Mask2Former model built on it."""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from dinov3_m2f.modeling.dinov3 import get_normalization
from dinov3_m2f.modeling.semantic_inference import semantic_probs, slide_inference, tta_inference
from dinov3_m2f.modeling.targets import prepare_targets

logger = logging.getLogger(__name__)

__all__ = ["DINOv3Mask2Former", "DINOv3SemSegBase"]

TEST_MODES = ("whole", "slide", "tta")
# Images come as 0..255 pixel values; the normalization presets hold mean/std on the 0..1 scale.
PIXEL_SCALE = 255.0


class DINOv3SemSegBase(nn.Module):
    """Shared part of the semantic-segmentation meta-architectures.

    Subclasses implement ``_forward_train(batched_inputs) -> losses`` and
    ``_predict_scores(images) -> [B, C, h, w]`` class probabilities for normalized images whose size
    meets the backbone's padding constraint, with ``backbone``, ``sem_seg_head`` and ``criterion``.
    This class handles the detectron2 input dicts (``"image"`` [3, H, W] RGB 0..255,
    ``"sem_seg"`` [H, W] int64, optional ``"height"``/``"width"``), normalization, padding and the
    test modes; inference returns ``[{"sem_seg": [C, height, width] scores}]``.
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
        tta_scales: Sequence[float] = (1.0,),
        tta_flip: bool = False,
    ):
        """
        Args:
            backbone: a detectron2 Backbone with ``padding_constraints``.
            sem_seg_head: the decode head on the backbone features.
            criterion: the training loss of the head's outputs.
            num_classes: number of semantic classes C.
            normalization: weight family whose pixel mean/std normalize the input
                (a key of ``dinov3_m2f.modeling.dinov3.NORMALIZATION``: "lvd1689m", "sat493m").
            ignore_value: label of unlabeled pixels; padding gets it too.
            test_mode: "whole" (padded full image), "slide" (windows of ``slide_crop_size``
                every ``slide_stride``) or "tta" (``tta_scales`` x ``tta_flip`` views; each view
                is predicted by sliding windows when ``slide_crop_size`` is set, else whole).
            slide_crop_size: (h, w) sliding-window size.
            slide_stride: (h, w) sliding-window stride.
            tta_scales: TTA resize ratios.
            tta_flip: add horizontally flipped TTA views.
        """
        super().__init__()
        mean, std = get_normalization(normalization)
        if test_mode not in TEST_MODES:
            raise ValueError(f"test_mode={test_mode!r} is not one of {TEST_MODES}")
        if test_mode == "slide" and (slide_crop_size is None or slide_stride is None):
            raise ValueError("test_mode='slide' needs slide_crop_size and slide_stride")
        if (slide_crop_size is None) != (slide_stride is None):
            raise ValueError("slide_crop_size and slide_stride must be given together")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.test_mode = test_mode
        self.slide_crop_size = tuple(slide_crop_size) if slide_crop_size else None
        self.slide_stride = tuple(slide_stride) if slide_stride else None
        self.tta_scales = tuple(tta_scales)
        self.tta_flip = tta_flip
        # Derived from the config, so not stored in checkpoints.
        self.register_buffer(
            "pixel_mean", torch.tensor(mean).view(-1, 1, 1) * PIXEL_SCALE, persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std).view(-1, 1, 1) * PIXEL_SCALE, persistent=False
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def size_divisibility(self) -> int:
        return self.backbone.padding_constraints["size_divisibility"]

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std  # [3, H, W]

    def forward(self, batched_inputs: List[Dict]) -> object:
        """
        Args:
            batched_inputs: detectron2 dicts, see the class docstring.

        Returns:
            training: dict of weighted losses; inference: list of ``{"sem_seg": [C, H, W]}``.
        """
        if self.training:
            return self._forward_train(batched_inputs)
        return [self._inference_one(x) for x in batched_inputs]

    def _forward_train(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def _predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, C, h, w] for normalized, constraint-sized images [B, 3, h, w]."""
        raise NotImplementedError

    def _training_batch(self, batched_inputs: List[Dict]) -> Tuple[ImageList, List[torch.Tensor]]:
        """Normalized, padded images and the label maps (on the model's device) of a batch."""
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError("training inputs need a 'sem_seg' label map")
        images = ImageList.from_tensors(
            [self._normalize(x["image"]) for x in batched_inputs],
            self.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )
        return images, [x["sem_seg"].to(self.device) for x in batched_inputs]

    def _predict_padded(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C, h, w] for normalized images [B, 3, h, w] of any size."""
        height, width = images.shape[-2:]
        div = self.size_divisibility
        pad_h, pad_w = -height % div, -width % div
        padded = F.pad(images, (0, pad_w, 0, pad_h))  # [B, 3, h + pad_h, w + pad_w]
        return self._predict_scores(padded)[:, :, :height, :width]

    def _predict_view(self, images: torch.Tensor) -> torch.Tensor:
        """One view: sliding windows when configured, else the padded whole image."""
        if self.slide_crop_size is None:
            return self._predict_padded(images)
        return slide_inference(
            self._predict_padded,
            images,
            crop_size=self.slide_crop_size,
            stride=self.slide_stride,
            num_classes=self.num_classes,
        )

    def _inference_one(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        image = self._normalize(inputs["image"])[None]  # [1, 3, H, W]
        height, width = image.shape[-2:]
        if self.test_mode == "whole":
            scores = self._predict_padded(image)
        elif self.test_mode == "slide":
            scores = self._predict_view(image)
        else:
            scores = tta_inference(
                self._predict_view,
                image,
                scales=self.tta_scales,
                flip=self.tta_flip,
                size_divisibility=self.size_divisibility,
            )
        out_h = inputs.get("height", height)
        out_w = inputs.get("width", width)
        return {"sem_seg": sem_seg_postprocess(scores[0], (height, width), out_h, out_w)}


@META_ARCH_REGISTRY.register()
class DINOv3Mask2Former(DINOv3SemSegBase):
    """Mask2Former for semantic segmentation on a frozen DINOv3 backbone.

    Training input: detectron2 dicts with ``"image"`` ([3, H, W] RGB, 0..255) and ``"sem_seg"``
    ([H, W] int64, ``ignore_value`` = no label). Returns the weighted losses.
    Inference output: ``[{"sem_seg": [C, height, width] scores}]`` at the size given by the
    dict's ``"height"``/``"width"`` (default: the input size).
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_classes: int,
        **kwargs,
    ):
        """
        Args:
            backbone: a detectron2 Backbone returning ``res2..res5`` (``D2DINOv3Backbone``).
            sem_seg_head: module mapping the features to ``{"pred_logits", "pred_masks",
                "aux_outputs"}`` (``Mask2FormerHead``).
            criterion: ``SetCriterion``; its ``weight_dict`` weights the returned losses.
            num_classes: number of semantic classes C.
            kwargs: normalization, ignore value and test-mode arguments of
                :class:`DINOv3SemSegBase`.
        """
        if not hasattr(criterion, "weight_dict"):
            raise TypeError("criterion must have a weight_dict (e.g. SetCriterion)")
        super().__init__(
            backbone=backbone, sem_seg_head=sem_seg_head, criterion=criterion,
            num_classes=num_classes, **kwargs,
        )

    def _forward_train(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, sem_segs = self._training_batch(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        targets = prepare_targets(
            sem_segs,
            num_classes=self.num_classes,
            ignore_value=self.ignore_value,
            padded_size=tuple(images.tensor.shape[-2:]),
        )
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return {name: loss * weights[name] for name, loss in losses.items()}

    def _predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.sem_seg_head(self.backbone(images))
        return semantic_probs(
            outputs["pred_logits"], outputs["pred_masks"], output_size=tuple(images.shape[-2:])
        )  # [B, C, h, w]

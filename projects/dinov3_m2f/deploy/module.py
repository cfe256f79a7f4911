"""The exportable semantic-segmentation model: normalisation, padding, Mask2Former, probabilities."""
import contextlib
import logging
from typing import Callable, Dict, Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MSDeformAttn
from ..modeling.semantic_inference import semantic_probs
from .metadata import RGB_CHANNELS

logger = logging.getLogger(__name__)

__all__ = ["SemSegExportModule", "deform_attn_impl"]


@contextlib.contextmanager
def deform_attn_impl(module: nn.Module, impl: str) -> Iterator[None]:
    """Run every :class:`MSDeformAttn` inside ``module`` with ``impl``, restoring it afterwards.

    Args:
        module: any model.
        impl: "compiled", "pytorch" or "auto" (see :func:`dinov3_m2f.layers.ms_deform_attn`).
    """
    layers = [m for m in module.modules() if isinstance(m, MSDeformAttn)]
    previous = [m.impl for m in layers]
    for m in layers:
        m.impl = impl
    try:
        yield
    finally:
        for m, old in zip(layers, previous):
            m.impl = old


class SemSegExportModule(nn.Module):
    """A Mask2Former semantic-segmentation model with its pre- and post-processing, for export.

    Input: ``image`` [B, 3, H, W] RGB, uint8 or float with values in 0..255 (any H, W >= 1).
    The image is normalised with the weight family's mean/std, padded at the bottom/right with
    zeros (after normalisation, as the Detectron2 model pads) to a multiple of
    ``size_divisibility``, segmented, and the scores are cropped back to H x W.

    Output: ``(probs, labels)``: ``probs`` [B, C, H, W] float32, the Mask2Former semantic scores
    (sum over queries of p(class) * sigmoid(mask); not normalised to sum to 1), and ``labels``
    [B, H, W] int64, their argmax. This is the whole-image inference of ``DINOv3Mask2Former``.

    Args:
        backbone: images [B, 3, H', W'] (normalised, H', W' multiples of ``size_divisibility``)
            -> the feature dict of the head (e.g. ``res2..res5``).
        sem_seg_head: features -> ``{"pred_logits" [B, Q, C+1], "pred_masks" [B, Q, h, w]}``
            (:class:`~dinov3_m2f.modeling.Mask2FormerHead`).
        pixel_mean: RGB mean on the 0..255 scale.
        pixel_std: RGB standard deviation on the 0..255 scale.
        size_divisibility: the backbone's padding constraint (32 for the ViT-Adapter).
    """

    def __init__(
        self,
        *,
        backbone: Callable[[torch.Tensor], Dict[str, torch.Tensor]],
        sem_seg_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
    ):
        super().__init__()
        if len(pixel_mean) != RGB_CHANNELS or len(pixel_std) != RGB_CHANNELS:
            raise ValueError(f"pixel_mean and pixel_std need {RGB_CHANNELS} values, got "
                             f"{list(pixel_mean)} and {list(pixel_std)}")
        if size_divisibility < 1:
            raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1))

    @classmethod
    def from_model(cls, model: nn.Module) -> "SemSegExportModule":
        """Wrap a Mask2Former meta-architecture (``DINOv3Mask2Former``), sharing its weights.

        Args:
            model: a module with ``backbone``, ``sem_seg_head``, ``pixel_mean`` / ``pixel_std``
                buffers [3, 1, 1] (0..255 scale) and ``size_divisibility``.

        Returns:
            The exportable module, in eval mode.
        """
        return cls(
            backbone=model.backbone,
            sem_seg_head=model.sem_seg_head,
            pixel_mean=model.pixel_mean.flatten().tolist(),
            pixel_std=model.pixel_std.flatten().tolist(),
            size_divisibility=model.size_divisibility,
        ).eval()

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image: [B, 3, H, W] RGB, uint8 or float in 0..255.

        Returns:
            (probs [B, C, H, W] float32, labels [B, H, W] int64).
        """
        if image.dim() != 4 or image.shape[1] != RGB_CHANNELS:
            raise ValueError(f"image must be [B, 3, H, W] RGB, got shape {tuple(image.shape)}")
        height, width = image.shape[-2:]
        x = (image.float() - self.pixel_mean) / self.pixel_std  # [B, 3, H, W]
        div = self.size_divisibility
        x = F.pad(x, (0, -width % div, 0, -height % div))  # [B, 3, H', W']
        outputs = self.sem_seg_head(self.backbone(x))
        probs = semantic_probs(
            outputs["pred_logits"], outputs["pred_masks"], output_size=tuple(x.shape[-2:])
        )  # [B, C, H', W']
        # Cropped to H x W by a negative padding: one plain copy. A slice or narrow would make
        # torch.export specialise on whether H == H' (the example's answer would hold for every
        # later size), and index_select gathers element by element (slow at full size).
        probs = F.pad(probs, (0, width - probs.shape[-1], 0, height - probs.shape[-2]))  # [B, C, H, W]
        return probs, probs.argmax(dim=1)

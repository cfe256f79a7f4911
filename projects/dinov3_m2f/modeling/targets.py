"""Turn a semantic label map into Mask2Former set-prediction targets.

Semantic segmentation as set prediction: every class present in an image becomes one target,
made of its class id and a binary mask. The label map also says where supervision is absent:
pixels equal to ``ignore_value`` (annotated "ignore", and the padding added to batch images of
different sizes, which the data pipeline fills with ``ignore_value``) are marked invalid, and the
matcher and the criterion leave them out.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["semseg_to_targets", "prepare_targets"]

logger = logging.getLogger(__name__)


def semseg_to_targets(
    sem_seg: torch.Tensor, *, num_classes: int, ignore_value: int = 255
) -> Dict[str, torch.Tensor]:
    """Build the targets of one image from its semantic label map.

    Args:
        sem_seg: [H, W] integer tensor of class ids in ``[0, num_classes)`` or ``ignore_value``.
        num_classes: number of foreground classes (without the no-object class).
        ignore_value: label of pixels that carry no supervision (ignore and padding).

    Returns:
        dict with
            "labels": [K] int64, the sorted class ids present in the image (K may be 0),
            "masks": [K, H, W] float32, one 0/1 mask per label,
            "valid": [H, W] bool, False where ``sem_seg == ignore_value``.
        All on the device of ``sem_seg``.

    Raises:
        TypeError: ``sem_seg`` is not an integer tensor.
        ValueError: bad shape, bad ``num_classes``/``ignore_value``, or labels that are neither
            a class id nor ``ignore_value`` (the message lists them).
    """
    if not isinstance(sem_seg, torch.Tensor):
        raise TypeError(f"sem_seg must be a torch.Tensor, got {type(sem_seg).__name__}")
    if sem_seg.dtype.is_floating_point or sem_seg.dtype.is_complex or sem_seg.dtype == torch.bool:
        raise TypeError(f"sem_seg must be an integer tensor, got dtype {sem_seg.dtype}")
    if sem_seg.dim() != 2:
        raise ValueError(f"sem_seg must have shape [H, W], got {tuple(sem_seg.shape)}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if 0 <= ignore_value < num_classes:
        raise ValueError(
            f"ignore_value={ignore_value} collides with a class id (num_classes={num_classes})"
        )

    sem_seg = sem_seg.long()
    valid = sem_seg != ignore_value  # [H, W]
    labels = torch.unique(sem_seg[valid])  # [K], sorted
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel() > 0:
        raise ValueError(
            f"sem_seg contains values {bad.tolist()} outside [0, {num_classes}) that are not "
            f"ignore_value={ignore_value}"
        )
    masks = (sem_seg[None] == labels[:, None, None]).to(torch.float32)  # [K, H, W]
    return {"labels": labels, "masks": masks, "valid": valid}


def prepare_targets(
    sem_segs: Union[Sequence[torch.Tensor], torch.Tensor],
    *,
    num_classes: int,
    ignore_value: int = 255,
    padded_size: Optional[Tuple[int, int]] = None,
) -> List[Dict[str, torch.Tensor]]:
    """Build the targets of a batch.

    Args:
        sem_segs: a [B, H, W] integer tensor, or a sequence of [H_i, W_i] integer tensors.
        num_classes: number of foreground classes.
        ignore_value: label of pixels that carry no supervision.
        padded_size: (H, W) of the padded image batch. When given, each label map is padded at
            the bottom/right with ``ignore_value`` to that size, so padding is invalid. The matcher
            and criterion need all targets of a batch at the same size.

    Returns:
        list of B dicts, see :func:`semseg_to_targets`.

    Raises:
        ValueError: a label map larger than ``padded_size``, or any error of
            :func:`semseg_to_targets`.
    """
    if isinstance(sem_segs, torch.Tensor) and sem_segs.dim() != 3:
        raise ValueError(f"sem_segs tensor must have shape [B, H, W], got {tuple(sem_segs.shape)}")
    targets = []
    for sem_seg in sem_segs:
        if padded_size is not None:
            pad_h = padded_size[0] - sem_seg.shape[-2]
            pad_w = padded_size[1] - sem_seg.shape[-1]
            if pad_h < 0 or pad_w < 0:
                raise ValueError(
                    f"label map of size {tuple(sem_seg.shape)} is larger than padded_size={padded_size}"
                )
            sem_seg = F.pad(sem_seg, (0, pad_w, 0, pad_h), value=ignore_value)
        targets.append(semseg_to_targets(sem_seg, num_classes=num_classes, ignore_value=ignore_value))
    return targets

"""Turn a semantic label map into Mask2Former set-prediction targets.

Semantic segmentation as set prediction: every class present in an image becomes one target,
made of its class id and a binary mask. The label map also says where supervision is absent:
pixels equal to ``ignore_value`` (annotated "ignore", and the padding added to batch images of
different sizes, which the meta-architecture fills with ``ignore_value``) are marked invalid, and
the matcher and the criterion leave them out.
"""
from typing import Dict, List, Sequence, Union

import torch

__all__ = ["semseg_to_targets", "prepare_targets"]


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
    sem_segs: Union[Sequence[torch.Tensor], torch.Tensor], *, num_classes: int, ignore_value: int = 255
) -> List[Dict[str, torch.Tensor]]:
    """Build the targets of a batch.

    Args:
        sem_segs: a [B, H, W] integer tensor, or a sequence of [H_i, W_i] integer tensors. The
            matcher and the criterion need all targets of a batch at one (padded) size.
        num_classes: number of foreground classes.
        ignore_value: label of pixels that carry no supervision.

    Returns:
        list of B dicts, see :func:`semseg_to_targets`.
    """
    if isinstance(sem_segs, torch.Tensor) and sem_segs.dim() != 3:
        raise ValueError(f"sem_segs tensor must have shape [B, H, W], got {tuple(sem_segs.shape)}")
    return [semseg_to_targets(s, num_classes=num_classes, ignore_value=ignore_value) for s in sem_segs]

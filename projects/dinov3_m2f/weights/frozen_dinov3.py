"""Build the frozen DINOv3 ViT of a segmentation model: from a checkpoint without allocating its
weights twice, or from a (seeded) random initialisation."""
import logging
import os
from typing import Any, Optional, Union

import torch

from ..modeling.dinov3.presets import build_dinov3
from ..modeling.dinov3.vit import DinoVisionTransformer
from .dinov3 import assign_tensor, load_dinov3_weights

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
DTypeLike = Union[str, torch.dtype]

# dtypes the frozen weights can be stored in, with the names a config may use for them.
FROZEN_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_frozen_dtype(dtype: DTypeLike) -> torch.dtype:
    """The torch dtype for a frozen-weights dtype given as a dtype or a name.

    Args:
        dtype: ``torch.float32``, ``torch.bfloat16``, ``torch.float16`` or one of the names in
            :data:`FROZEN_DTYPES` (``"bf16"``, ``"bfloat16"``, ...).
    """
    if isinstance(dtype, str) and dtype in FROZEN_DTYPES:
        return FROZEN_DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in FROZEN_DTYPES.values():
        return dtype
    raise ValueError(f"dtype={dtype!r} is not a frozen-weights dtype; valid: {', '.join(FROZEN_DTYPES)}")


def build_frozen_dinov3(
    name: Optional[str] = None,
    *,
    weights: Optional[PathLike] = None,
    init_seed: Optional[int] = None,
    dtype: DTypeLike = torch.float32,
    device: Union[str, torch.device] = "cpu",
    **overrides: Any,
) -> DinoVisionTransformer:
    """Build a frozen DINOv3 ViT, from a checkpoint or a random initialisation.

    With ``weights``, the ViT is built on the meta device (no memory) and every tensor is allocated
    once, in its final dtype on ``device``, and filled from the file (:func:`load_dinov3_weights`:
    Meta ``.pth`` mapped with ``torch.load(mmap=True)``, ``.safetensors`` through ``safe_open``,
    Hugging Face shards one at a time; strict key, shape and ``config.json`` checks). Building and
    loading peaks at about the size of the weights in ``dtype`` (``docs/benchmarks.md``).

    Without ``weights`` the ViT gets the random initialisation of :func:`build_dinov3` (seeded with
    ``init_seed`` when given, leaving the global RNG untouched), exactly as before this function
    existed; it is built in float32 on the CPU, then converted and moved.

    The weights of every Linear layer and of the patch embedding are stored in ``dtype``; LayerNorm,
    LayerScale, the class/storage/mask tokens and the buffers (RoPE periods, qkv bias mask) stay
    float32 (:meth:`DinoVisionTransformer.storage_dtype`; < 0.1% of the weights). With a reduced
    ``dtype`` the ViT runs under autocast to that dtype (``autocast_dtype``, default ``dtype``), which
    computes those layers in ``dtype`` anyway: bfloat16 weights give the same features as float32
    weights under bfloat16 autocast.

    Args:
        name: preset name (a key of ``DINOV3_PRESETS``), or None to describe the ViT entirely with
            ``overrides``.
        weights: checkpoint file or HF directory; None = random initialisation.
        init_seed: seed of the random initialisation (ignored with ``weights``). Set it when
            checkpoints hold the trainable weights only, so the frozen ViT can be rebuilt.
        dtype: dtype of the frozen weights: ``torch.float32`` / ``torch.bfloat16`` /
            ``torch.float16`` or a name (``"fp32"``, ``"bf16"``, ``"bfloat16"``, ``"fp16"``, ...).
        device: device the weights are loaded to (e.g. ``"cuda"``: the CPU then holds only one tensor
            at a time).
        **overrides: other :class:`DinoVisionTransformer` arguments (``embed_dim``, ``depth``,
            ``autocast_dtype``, ...). ``frozen`` cannot be False.

    Returns:
        The ViT: frozen (no gradients, always in eval mode), on ``device``.

    Raises:
        ValueError: an unknown ``dtype``, ``frozen=False``, or ``autocast_dtype=None`` with weights
            in a reduced dtype (they cannot run on float32 inputs without autocast); checkpoint errors
            (see :func:`load_dinov3_weights`).
    """
    dtype = resolve_frozen_dtype(dtype)
    if not overrides.get("frozen", True):
        raise ValueError("build_frozen_dinov3 builds frozen ViTs; frozen=False is not allowed (use build_dinov3)")
    if dtype != torch.float32:
        overrides.setdefault("autocast_dtype", dtype)
        if overrides["autocast_dtype"] is None:
            raise ValueError(f"autocast_dtype=None: weights stored in {dtype} need autocast to run")
    if weights:
        if init_seed is not None:
            logger.info("init_seed=%d is not used: the DINOv3 weights come from %s", init_seed, weights)
        with torch.device("meta"):
            model = build_dinov3(name, **overrides)
        load_dinov3_weights(model, weights, dtype=dtype, device=device)
        logger.info("Loaded DINOv3 weights from %s (%s, %s)", weights, dtype, device)
        return model
    if init_seed is None:
        logger.warning(
            "DINOv3 backbone has random weights and no init_seed: trainable-only checkpoints "
            "of this model cannot be reproduced (set init_seed, weights or full checkpoints)"
        )
        model = build_dinov3(name, **overrides)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = build_dinov3(name, **overrides)
    for key, tensor in model.state_dict().items():
        stored = tensor.to(device=device, dtype=model.storage_dtype(key, dtype))
        if stored is not tensor:
            assign_tensor(model, key, stored)
    return model

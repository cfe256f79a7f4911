"""Load DINOv3 ViT weights from the official (Meta) or the Hugging Face format, tensor by tensor.

The inputs (a ``.pth``/``.pt`` file, a ``.safetensors`` file or a Hugging Face model directory,
whose ``config.json`` is compared with the model by :func:`~.dinov3_hf.check_hf_config`) are read
by :mod:`.dinov3_sources`.

Loading is strict: every model key must come from the checkpoint and every checkpoint key must be
used, except a few keys that do not affect inference (see :data:`OPTIONAL_KEY_PATTERNS`); this is
checked on names and shapes before any tensor data is read.

Memory: every model tensor is allocated once, in its final dtype and on its final device, and
filled from the file (the dtype conversion happens in the copy), so a model built on the meta device
is materialised without a second copy of its weights. The files are mapped, not read: their pages
come in when a tensor is copied, and on Linux they are handed back (``madvise(MADV_DONTNEED)`` on
the file's own mapping) right after, so the resident set stays about the size of the model.
"""
import ctypes
import logging
import mmap
import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from ..modeling.dinov3.vit import DinoVisionTransformer
from .dinov3_hf import QKV_NAMES, check_hf_config
from .dinov3_sources import MAX_KEYS_IN_ERROR, Checkpoint, assembled_shapes, open_checkpoint

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Keys the loader tolerates when absent from the checkpoint or from the model: unused at inference
# (mask token, local-crop cls norm) or derivable (bias mask). Absent ones get their initial value.
OPTIONAL_KEY_PATTERNS = (
    re.compile(r"mask_token"),
    re.compile(r"local_cls_norm\.(weight|bias)"),
    re.compile(r"blocks\.\d+\.attn\.qkv\.bias_mask"),
)
# Keys Hugging Face checkpoints never hold: computed from config.json's rope_theta, which is checked
# to equal the model's RoPE base (Meta checkpoints must hold them: their values are bf16-rounded).
HF_DERIVED_KEYS = ("rope_embed.periods",)


# ---------------------------------------------------------------------------- mapped file pages
def _load_libc() -> Optional[ctypes.CDLL]:
    if not hasattr(mmap, "MADV_DONTNEED"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_LIBC = _load_libc()


class _PageReleaser:
    """Drops this process's mapping of the file pages behind tensors that were read from a file.

    The pages stay in the kernel's page cache (and are mapped again if touched); the process's
    resident set no longer counts them. Only pages inside the mappings of that one file, listed in
    ``/proc/self/maps`` when the releaser is made, are touched, so memory of any other kind is never
    affected; without ``/proc`` or ``madvise`` nothing is released.

    Args:
        path: the file the tensors are views of (already mapped).
    """

    def __init__(self, path: str) -> None:
        self._ranges: List[Tuple[int, int]] = []
        if _LIBC is None:
            return
        real_path = os.path.realpath(path)
        try:
            with open("/proc/self/maps", encoding="utf-8") as maps:
                for line in maps:
                    # "start-end perms offset dev inode pathname"
                    fields = line.rstrip("\n").split(maxsplit=5)
                    if len(fields) == 6 and fields[5] == real_path:
                        start, end = fields[0].split("-")
                        self._ranges.append((int(start, 16), int(end, 16)))
        except OSError:
            self._ranges = []

    def __call__(self, tensor: Tensor) -> None:
        """Release the whole pages of ``tensor`` that lie in the file's mappings."""
        begin = tensor.data_ptr()
        end = begin + tensor.nbytes
        for low, high in self._ranges:
            start = -(-max(begin, low) // mmap.PAGESIZE) * mmap.PAGESIZE  # rounded up to a page
            stop = min(end, high) // mmap.PAGESIZE * mmap.PAGESIZE
            if stop > start and _LIBC.madvise(start, stop - start, mmap.MADV_DONTNEED) != 0:
                logger.debug("madvise failed (errno %d): pages stay resident", ctypes.get_errno())


# ---------------------------------------------------------------------------- strict checks
def _is_optional(key: str) -> bool:
    return any(pattern.fullmatch(key) for pattern in OPTIONAL_KEY_PATTERNS)


def _checkpoint_size(shapes: Mapping[str, List[int]]) -> Tuple[Optional[int], int]:
    embed_dim = shapes["cls_token"][-1] if "cls_token" in shapes else None
    blocks = {int(m.group(1)) for m in (re.match(r"^blocks\.(\d+)\.", k) for k in shapes) if m}
    return embed_dim, (max(blocks) + 1 if blocks else 0)


def _format_keys(keys: List[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    more = len(keys) - MAX_KEYS_IN_ERROR
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def _check_compatible(
    model: DinoVisionTransformer, shapes: Mapping[str, List[int]], path: str, *, derived: Iterable[str]
) -> None:
    """Raise naming the file and the keys if the checkpoint's names or shapes do not fit ``model``."""
    embed_dim, depth = _checkpoint_size(shapes)
    if embed_dim != model.embed_dim or depth != model.n_blocks:
        raise ValueError(
            f"DINOv3 checkpoint {path!r} has embed_dim={embed_dim}, depth={depth} but the model has "
            f"embed_dim={model.embed_dim}, depth={model.n_blocks}"
        )
    expected = model.state_dict()
    derived = set(derived)
    missing = sorted(k for k in expected if k not in shapes and not _is_optional(k) and k not in derived)
    unexpected = sorted(k for k in shapes if k not in expected and not _is_optional(k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        raise ValueError(f"DINOv3 checkpoint {path!r} does not match the model: " + "; ".join(parts))
    mismatched = [
        f"{k}: checkpoint {tuple(shapes[k])} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in shapes and list(v.shape) != list(shapes[k])
    ]
    if mismatched:
        raise ValueError(f"DINOv3 checkpoint {path!r} has shape mismatches: {_format_keys(mismatched)}")


def _check_bias_masks(checkpoint: Checkpoint) -> None:
    """Raise if a stored ``bias_mask`` is not finite (the official code leaves it NaN until loaded)."""
    for file, entries in checkpoint.parts:
        masks = [entry for entry in entries if entry.key.endswith("bias_mask")]
        if not masks:
            continue
        with file.tensors() as get:
            for entry in masks:
                if not torch.isfinite(get(entry.name)).all():
                    raise ValueError(
                        f"DINOv3 checkpoint {checkpoint.path!r} has a non-finite {entry.key} (uninitialised bias mask)"
                    )


# ---------------------------------------------------------------------------- materialising
def assign_tensor(model: nn.Module, key: str, tensor: Tensor) -> None:
    """Make ``tensor`` the parameter or buffer ``key`` of ``model`` (a parameter keeps its ``requires_grad``).

    Args:
        model: the module.
        key: a ``state_dict`` key of ``model``.
        tensor: the new value (any dtype and device; it is not copied).
    """
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name)
    current = getattr(module, name)
    if isinstance(current, nn.Parameter):
        tensor = nn.Parameter(tensor, requires_grad=current.requires_grad)
    setattr(module, name, tensor)


def _materialize(
    model: DinoVisionTransformer,
    checkpoint: Checkpoint,
    *,
    partial: Set[str],
    dtype: Optional[torch.dtype],
    device: Optional[torch.device],
) -> None:
    """Give every model tensor a new value from the checkpoint (or its initial value, for absent optional keys)."""
    specs = {key: (value.shape, value.dtype, value.device) for key, value in model.state_dict().items()}
    created: Dict[str, Tensor] = {}

    def target(key: str) -> Tensor:
        if key not in created:
            shape, current_dtype, current_device = specs[key]
            new_dtype = current_dtype if dtype is None else model.storage_dtype(key, dtype)
            new_device = device if device is not None else current_device
            if new_device.type == "meta":
                new_device = torch.device("cpu")
            make = torch.zeros if key in partial else torch.empty  # an absent k-bias third stays 0
            created[key] = make(shape, dtype=new_dtype, device=new_device)
            assign_tensor(model, key, created[key])
        return created[key]

    for file, entries in checkpoint.parts:
        with file.tensors() as get:
            release = _PageReleaser(file.path)
            for entry in entries:
                if entry.key not in specs:  # an optional key the model does not have
                    continue
                source = get(entry.name)
                dest = target(entry.key)
                if entry.chunk is not None:
                    dest = dest.chunk(len(QKV_NAMES), dim=0)[entry.chunk]  # [D, ...] third of [3D, ...]
                dest.copy_(source.reshape(entry.shape))
                release(source)
    for key in specs.keys() - created.keys():  # optional or derived keys the checkpoint lacks
        target(key).copy_(model.initial_value(key))


def load_dinov3_weights(
    model: DinoVisionTransformer,
    path: PathLike,
    *,
    dtype: Optional[torch.dtype] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> None:
    """Load official (Meta) or Hugging Face DINOv3 ViT weights into ``model``, strictly.

    The format is detected from the path and the key names. Names and shapes are checked before any
    data is read. Every model tensor is then replaced by a new one, allocated in its final dtype and
    device and filled tensor by tensor, so ``model`` may live on the meta device (see
    :func:`~.build.build_frozen_dinov3`). Keys matching :data:`OPTIONAL_KEY_PATTERNS` may be absent on
    either side; absent model keys get their initial value. For HF checkpoints the RoPE periods are
    computed from the model's base, which ``config.json``'s ``rope_theta`` must equal.

    Args:
        model: the backbone to fill (its ``requires_grad`` flags are kept).
        path: ``.pth``/``.pt`` file, ``.safetensors`` file or HF model directory.
        dtype: dtype of the frozen weights (see :meth:`DinoVisionTransformer.storage_dtype`); None keeps
            each tensor's current dtype.
        device: device of the loaded tensors; None keeps each tensor's device (the CPU for meta tensors).
    """
    path = os.fspath(path)
    checkpoint = open_checkpoint(path)
    if checkpoint.hf_config is not None:
        config_path, config = checkpoint.hf_config
        check_hf_config(model, config, path=config_path)
    shapes, partial = assembled_shapes(checkpoint)
    _check_compatible(model, shapes, path, derived=HF_DERIVED_KEYS if checkpoint.hf_naming else ())
    _check_bias_masks(checkpoint)
    logger.info(
        "Loading %s-format DINOv3 weights from %s", "Hugging Face" if checkpoint.hf_naming else "official", path
    )
    _materialize(
        model, checkpoint, partial=partial, dtype=dtype, device=None if device is None else torch.device(device)
    )

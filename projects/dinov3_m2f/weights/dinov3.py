"""Load DINOv3 ViT weights from the official (Meta) or the Hugging Face format, tensor by tensor.

Supported inputs:

* a Meta ``.pth`` / ``.pt`` file, read with ``torch.load(mmap=True, weights_only=True)`` (files that
  are not in torch's zip format are read whole), either a raw state dict or a dict wrapping it under
  ``"model"``, ``"teacher"``, ``"state_dict"`` or ``"module"``; ``backbone.`` / ``module.`` key
  prefixes are handled;
* a ``.safetensors`` file with Meta or Hugging Face key names (safetensors' ``safe_open``);
* a Hugging Face model directory: ``config.json`` plus ``model.safetensors`` or
  ``model.safetensors.index.json`` with its shards, read one shard at a time. ``config.json`` is
  compared with the model (:func:`~.hf_format.check_hf_config`).

Loading is strict: every model key must come from the checkpoint and every checkpoint key must be
used, except a few keys that do not affect inference (see :data:`OPTIONAL_KEY_PATTERNS`); this is
checked on names and shapes before any tensor data is read.

Memory: every model tensor is allocated once, in its final dtype and on its final device, and
filled from the file (the dtype conversion happens in the copy), so a model built on the meta device
is materialised without a second copy of its weights. The files are mapped, not read: their pages
come in when a tensor is copied, and on Linux they are handed back (``madvise(MADV_DONTNEED)`` on
the file's own mapping) right after, so the resident set stays about the size of the model.
"""
import dataclasses
import logging
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from ..modeling.dinov3.vit import DinoVisionTransformer
from .dinov3_files import (
    _MAX_KEYS_IN_ERROR,
    _hf_directory,
    _PageReleaser,
    _PthFile,
    _SafetensorsFile,
    _strip_prefixes,
    _TensorFile,
)
from .dinov3_hf import (
    K_BIAS_CHUNK,
    QKV_NAMES,
    check_hf_config,
    has_gated_mlp,
    is_hf_state_dict,
    official_key,
    official_shape,
)

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


# ---------------------------------------------------------------------------- what the checkpoint holds
@dataclasses.dataclass(frozen=True)
class _Entry:
    """One tensor of a checkpoint file and the model tensor (or qkv third) it fills."""

    name: str  # key in the file
    key: str  # official key
    shape: List[int]  # shape under the official key (of one third for a q/k/v projection)
    chunk: Optional[int] = None  # q/k/v third of the fused qkv tensor it fills; None = whole tensor


@dataclasses.dataclass
class _Checkpoint:
    """Everything about a checkpoint but its tensor data."""

    path: str
    parts: List[Tuple[_TensorFile, List[_Entry]]]  # files in reading order, with their entries
    hf_naming: bool
    hf_config: Optional[Tuple[str, Dict[str, Any]]]  # (path, content) of config.json


def _open_checkpoint(path: str) -> _Checkpoint:
    hf_config = None
    if os.path.isdir(path):
        files, hf_config = _hf_directory(path)
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"DINOv3 checkpoint {path!r} does not exist")
    elif path.endswith(".safetensors"):
        files = [_SafetensorsFile(path)]
    else:
        files = [_PthFile(path)]
    located = {name: file for file in files for name in file.shapes}
    names = _strip_prefixes(located, path)  # checkpoint key -> key in the file
    hf_naming = is_hf_state_dict(names)
    gated = hf_naming and has_gated_mlp(names)
    entries: Dict[int, List[_Entry]] = {id(file): [] for file in files}
    for key, name in names.items():
        shape = located[name].shapes[name]
        if hf_naming:
            target = official_key(key, gated=gated)
            entry = _Entry(name, target.key, official_shape(key, shape), target.chunk)
        else:
            entry = _Entry(name, key, shape)
        entries[id(located[name])].append(entry)
    return _Checkpoint(path, [(file, entries[id(file)]) for file in files], hf_naming, hf_config)


def _assembled_shapes(checkpoint: _Checkpoint) -> Tuple[Dict[str, List[int]], Set[str]]:
    """Official key -> shape of the checkpoint, with q/k/v projections fused.

    Returns:
        The shapes, and the fused qkv biases whose k third is absent (HF files drop it: it stays 0).
    """
    shapes: Dict[str, List[int]] = {}
    thirds: Dict[str, Dict[int, List[int]]] = {}
    for _, entries in checkpoint.parts:
        for entry in entries:
            if entry.chunk is None:
                shapes[entry.key] = entry.shape
            else:
                thirds.setdefault(entry.key, {})[entry.chunk] = entry.shape
    partial = set()
    for key, chunks in thirds.items():
        absent = set(range(len(QKV_NAMES))) - set(chunks)
        may_be_absent = {K_BIAS_CHUNK} if key.endswith(".bias") else set()
        if absent - may_be_absent or len({tuple(shape) for shape in chunks.values()}) != 1:
            found = {QKV_NAMES[chunk]: shape for chunk, shape in sorted(chunks.items())}
            raise ValueError(
                f"{checkpoint.path!r}: {key} is made from the projections {found} (name: shape); expected "
                f"{list(QKV_NAMES)} of one shape (the k bias may be absent)"
            )
        third = next(iter(chunks.values()))
        shapes[key] = [third[0] * len(QKV_NAMES), *third[1:]]  # [3 * D, ...]
        if absent:
            partial.add(key)
    return shapes, partial


# ---------------------------------------------------------------------------- strict checks
def _is_optional(key: str) -> bool:
    return any(pattern.fullmatch(key) for pattern in OPTIONAL_KEY_PATTERNS)


def _checkpoint_size(shapes: Mapping[str, List[int]]) -> Tuple[Optional[int], int]:
    embed_dim = shapes["cls_token"][-1] if "cls_token" in shapes else None
    blocks = {int(m.group(1)) for m in (re.match(r"^blocks\.(\d+)\.", k) for k in shapes) if m}
    return embed_dim, (max(blocks) + 1 if blocks else 0)


def _format_keys(keys: List[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_ERROR])
    more = len(keys) - _MAX_KEYS_IN_ERROR
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


def _check_bias_masks(checkpoint: _Checkpoint) -> None:
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
    checkpoint: _Checkpoint,
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
    checkpoint = _open_checkpoint(path)
    if checkpoint.hf_config is not None:
        config_path, config = checkpoint.hf_config
        check_hf_config(model, config, path=config_path)
    shapes, partial = _assembled_shapes(checkpoint)
    _check_compatible(model, shapes, path, derived=HF_DERIVED_KEYS if checkpoint.hf_naming else ())
    _check_bias_masks(checkpoint)
    logger.info(
        "Loading %s-format DINOv3 weights from %s", "Hugging Face" if checkpoint.hf_naming else "official", path
    )
    _materialize(
        model, checkpoint, partial=partial, dtype=dtype, device=None if device is None else torch.device(device)
    )

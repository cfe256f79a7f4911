"""Load DINOv3 ViT weights from the official (Meta) or the Hugging Face format.

Supported inputs:

* a Meta ``.pth`` / ``.pt`` file (``torch.load(weights_only=True)``), either a raw state dict or a
  dict wrapping it under ``"model"``, ``"teacher"``, ``"state_dict"`` or ``"module"``; ``backbone.``
  / ``module.`` key prefixes are handled;
* a ``.safetensors`` file with Meta or Hugging Face key names;
* a Hugging Face model directory: ``config.json`` plus ``model.safetensors`` or
  ``model.safetensors.index.json`` with its shards.

Loading is strict: every model key must come from the checkpoint and every checkpoint key must be
used, except a few keys that do not affect inference (see :data:`OPTIONAL_KEY_PATTERNS`).
"""
import json
import logging
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from ...utils import safe_torch_load
from .rope import compute_rope_periods
from .vit import LAYER_NORM_EPS, DinoVisionTransformer

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
StateDict = Dict[str, Tensor]

HF_CONFIG_NAME = "config.json"
HF_WEIGHTS_NAME = "model.safetensors"
HF_INDEX_NAME = "model.safetensors.index.json"
# Keys under which training checkpoints wrap the backbone state dict (checked in this order).
WRAPPER_KEYS = ("teacher", "model", "state_dict", "module")
# Key prefixes stripped from Meta-format state dicts (a backbone inside a larger model, DDP).
STRIPPED_PREFIXES = ("backbone.", "module.")
# Keys the loader tolerates when absent from the checkpoint or from the model: unused at inference
# (mask token, local-crop cls norm) or derivable (bias mask, RoPE periods of HF checkpoints).
OPTIONAL_KEY_PATTERNS = (
    re.compile(r"mask_token"),
    re.compile(r"local_cls_norm\.(weight|bias)"),
    re.compile(r"blocks\.\d+\.attn\.qkv\.bias_mask"),
)
# Number of key names quoted in error messages.
_MAX_KEYS_IN_ERROR = 5
# Official activation of each FFN type (Hugging Face ``hidden_act``).
_HF_ACT = {"mlp": "gelu", "swiglu": "silu"}

_HF_LAYER_RE = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_HF_LAYER_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_MLP_RENAMES = {"up_proj": "fc1", "down_proj": "fc2"}
_HF_SWIGLU_RENAMES = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"}
_HF_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "storage_tokens",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_QKV = ("q_proj", "k_proj", "v_proj")


# ---------------------------------------------------------------------------- reading files
def _safetensors_load(path: str) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"Could not read safetensors file {path!r}: {exc}") from exc


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Could not read JSON file {path!r}: {exc}") from exc


def _unwrap_state_dict(obj: Any, path: str) -> StateDict:
    """Find the tensor dict inside a (possibly wrapped) training checkpoint."""
    while isinstance(obj, Mapping):
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if wrapper is None:
            break
        logger.info("Using the %r entry of checkpoint %s", wrapper, path)
        obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path!r} is not a DINOv3 checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    not_tensors = [key for key, value in obj.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path!r} is not a DINOv3 state dict: non-tensor entries {not_tensors[:_MAX_KEYS_IN_ERROR]}"
        )
    return dict(obj)


def _strip_prefixes(state_dict: StateDict, path: str) -> StateDict:
    for prefix in STRIPPED_PREFIXES:
        matching = [key for key in state_dict if key.startswith(prefix)]
        if not matching:
            continue
        dropped = len(state_dict) - len(matching)
        if dropped:
            logger.info(
                "Checkpoint %s: keeping the %d %r keys, dropping %d others", path, len(matching), prefix, dropped
            )
        state_dict = {key[len(prefix) :]: state_dict[key] for key in matching}
    return state_dict


def _read_hf_directory(path: str) -> Tuple[StateDict, Optional[Dict[str, Any]]]:
    config_path = os.path.join(path, HF_CONFIG_NAME)
    config = _read_json(config_path) if os.path.isfile(config_path) else None
    single = os.path.join(path, HF_WEIGHTS_NAME)
    index_path = os.path.join(path, HF_INDEX_NAME)
    if os.path.isfile(single):
        return _safetensors_load(single), config
    if os.path.isfile(index_path):
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, Mapping) or not weight_map:
            raise ValueError(f"{index_path!r} has no 'weight_map'")
        state_dict: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            state_dict.update(_safetensors_load(os.path.join(path, shard)))
        missing = sorted(set(weight_map) - set(state_dict))
        if missing:
            raise ValueError(f"Shards listed in {index_path!r} lack keys {missing[:_MAX_KEYS_IN_ERROR]}")
        return state_dict, config
    raise ValueError(f"Directory {path!r} has neither {HF_WEIGHTS_NAME} nor {HF_INDEX_NAME}")


def read_dinov3_checkpoint(path: PathLike) -> Tuple[StateDict, Optional[Dict[str, Any]]]:
    """Read the raw state dict (and the HF ``config.json`` if any) of a DINOv3 checkpoint.

    Args:
        path: ``.pth``/``.pt`` file, ``.safetensors`` file or Hugging Face directory.

    Returns:
        ``(state_dict, hf_config)``; keys are unmodified apart from wrapper/prefix removal.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_hf_directory(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DINOv3 checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        return _strip_prefixes(_safetensors_load(path), path), None
    return _strip_prefixes(_unwrap_state_dict(safe_torch_load(path, what="DINOv3 checkpoint"), path), path), None


# ---------------------------------------------------------------------------- HF <-> Meta keys
def is_hf_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """True if the keys follow the Hugging Face ``DINOv3ViTModel`` naming."""
    return any(key.startswith("embeddings.") or _HF_LAYER_RE.match(key) for key in state_dict)


def _fuse_qkv(parts: Dict[str, Dict[str, Tensor]], layer: str, path: str) -> StateDict:
    weights = parts.get("weight", {})
    if set(weights) != set(_QKV):
        raise ValueError(f"{path!r}: layer {layer} has attention weights {sorted(weights)}, expected {list(_QKV)}")
    fused = {"weight": torch.cat([weights[name] for name in _QKV], dim=0)}  # [3D, D]
    biases = parts.get("bias", {})
    if biases:
        # HF drops the k bias (it is masked to zero in the official model): restore it as zeros.
        reference = next(iter(biases.values()))
        fused["bias"] = torch.cat([biases.get(name, torch.zeros_like(reference)) for name in _QKV])  # [3D]
    return fused


def convert_hf_state_dict(state_dict: Mapping[str, Tensor], *, path: str = "<state_dict>") -> StateDict:
    """Rename a Hugging Face ``DINOv3ViTModel`` state dict to the official key names.

    Unknown keys are passed through unchanged (the strict loader reports them). RoPE periods are
    not part of HF checkpoints and are not added here.

    Args:
        state_dict: HF keys (``layer.i.*`` or ``model.layer.i.*``).
        path: file name used in error messages.

    Returns:
        State dict with official key names.
    """
    out: StateDict = {}
    qkv: Dict[str, Dict[str, Dict[str, Tensor]]] = {}
    for key, value in state_dict.items():
        if key in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[key]] = value
            continue
        if key == "embeddings.mask_token":
            out["mask_token"] = value.reshape(1, -1)  # [1, 1, D] -> [1, D]
            continue
        match = _HF_LAYER_RE.match(key)
        if match is None:
            out[key] = value
            continue
        layer, rest = match.groups()
        prefix = f"blocks.{layer}."
        module, _, param = rest.rpartition(".")
        attn_match = re.fullmatch(r"attention\.([qkv]_proj)", module)
        mlp_match = re.fullmatch(r"mlp\.(\w+)", module)
        if attn_match:
            qkv.setdefault(layer, {}).setdefault(param, {})[attn_match.group(1)] = value
        elif module in _HF_LAYER_RENAMES:
            out[prefix + _HF_LAYER_RENAMES[module] + "." + param] = value
        elif rest in _HF_LAYER_RENAMES:
            out[prefix + _HF_LAYER_RENAMES[rest]] = value
        elif mlp_match:
            gated = f"layer.{layer}.mlp.gate_proj.weight" in state_dict or (
                f"model.layer.{layer}.mlp.gate_proj.weight" in state_dict
            )
            renames = _HF_SWIGLU_RENAMES if gated else _HF_MLP_RENAMES
            name = renames.get(mlp_match.group(1), mlp_match.group(1))
            out[f"{prefix}mlp.{name}.{param}"] = value
        else:
            out[key] = value
    for layer, parts in qkv.items():
        for param, tensor in _fuse_qkv(parts, layer, path).items():
            out[f"blocks.{layer}.attn.qkv.{param}"] = tensor
    return out


def convert_to_hf_state_dict(state_dict: Mapping[str, Tensor], *, layer_prefix: str = "layer.") -> StateDict:
    """Rename an official-format DINOv3 state dict to Hugging Face ``DINOv3ViTModel`` keys.

    The masked k bias is dropped (HF has no k bias); ``rope_embed.periods``, ``bias_mask`` and
    ``local_cls_norm`` have no HF counterpart and are dropped too.

    Args:
        state_dict: official key names.
        layer_prefix: prefix of the block keys: ``"layer."`` (published files) or ``"model.layer."``
            (the module tree of ``DINOv3ViTModel`` in transformers 5).

    Returns:
        State dict with HF key names (new tensors; safe to save with safetensors).
    """
    top = {ours: theirs for theirs, ours in _HF_TOP_RENAMES.items()}
    layer_renames = {ours: theirs for theirs, ours in _HF_LAYER_RENAMES.items()}
    mlp_renames = {ours: theirs for theirs, ours in (*_HF_MLP_RENAMES.items(), *_HF_SWIGLU_RENAMES.items())}
    block_re = re.compile(r"^blocks\.(\d+)\.(.+)$")
    out: StateDict = {}
    for key, value in state_dict.items():
        value = value.detach().clone()
        match = block_re.match(key)
        if key in top:
            out[top[key]] = value
        elif key == "mask_token":
            out["embeddings.mask_token"] = value.reshape(1, 1, -1)  # [1, D] -> [1, 1, D]
        elif key == "rope_embed.periods" or key.startswith("local_cls_norm.") or key.endswith("bias_mask"):
            continue
        elif match is None:
            raise ValueError(f"No Hugging Face equivalent for DINOv3 key {key!r}")
        else:
            layer, rest = match.groups()
            prefix = f"{layer_prefix}{layer}."
            module, _, param = rest.rpartition(".")
            if module == "attn.qkv":
                for name, chunk in zip(_QKV, value.chunk(3, dim=0)):
                    if not (param == "bias" and name == "k_proj"):
                        out[f"{prefix}attention.{name}.{param}"] = chunk.clone()
            elif rest in layer_renames:
                out[prefix + layer_renames[rest]] = value
            elif module in layer_renames:
                out[f"{prefix}{layer_renames[module]}.{param}"] = value
            elif module.startswith("mlp."):
                out[f"{prefix}mlp.{mlp_renames[module[len('mlp.'):]]}.{param}"] = value
            else:
                raise ValueError(f"No Hugging Face equivalent for DINOv3 key {key!r}")
    return out


def hf_config_from_model(model: DinoVisionTransformer) -> Dict[str, Any]:
    """``config.json`` content of the Hugging Face ``DINOv3ViTModel`` equivalent to ``model``."""
    block = model.blocks[0]
    gated = hasattr(block.mlp, "w1")
    hidden = block.mlp.w1.out_features if gated else block.mlp.fc1.out_features
    ffn_bias = (block.mlp.w1 if gated else block.mlp.fc1).bias is not None
    qkv_bias = block.attn.qkv.bias is not None
    layerscale = getattr(block.ls1, "gamma", None)
    if layerscale is None:
        raise ValueError("Hugging Face DINOv3 models always have LayerScale; this model has none")
    return {
        "model_type": "dinov3_vit",
        "architectures": ["DINOv3ViTModel"],
        "hidden_size": model.embed_dim,
        "intermediate_size": hidden,
        "num_hidden_layers": model.n_blocks,
        "num_attention_heads": model.num_heads,
        "hidden_act": _HF_ACT["swiglu" if gated else "mlp"],
        "use_gated_mlp": gated,
        "layer_norm_eps": LAYER_NORM_EPS,
        "rope_theta": model.rope_embed.base,
        "patch_size": model.patch_size,
        "num_channels": model.in_chans,
        "query_bias": qkv_bias,
        "key_bias": qkv_bias and not hasattr(block.attn.qkv, "bias_mask"),
        "value_bias": qkv_bias,
        "proj_bias": block.attn.proj.bias is not None,
        "mlp_bias": ffn_bias,
        "num_register_tokens": model.n_storage_tokens,
    }


# ---------------------------------------------------------------------------- strict loading
def _is_optional(key: str) -> bool:
    return any(pattern.fullmatch(key) for pattern in OPTIONAL_KEY_PATTERNS)


def _checkpoint_size(state_dict: Mapping[str, Tensor]) -> Tuple[Optional[int], int]:
    embed_dim = state_dict["cls_token"].shape[-1] if "cls_token" in state_dict else None
    blocks = {int(m.group(1)) for m in (re.match(r"^blocks\.(\d+)\.", k) for k in state_dict) if m}
    return embed_dim, (max(blocks) + 1 if blocks else 0)


def _format_keys(keys: List[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_ERROR])
    more = len(keys) - _MAX_KEYS_IN_ERROR
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def _check_compatible(model: DinoVisionTransformer, state_dict: Mapping[str, Tensor], path: str) -> None:
    embed_dim, depth = _checkpoint_size(state_dict)
    if embed_dim != model.embed_dim or depth != model.n_blocks:
        raise ValueError(
            f"DINOv3 checkpoint {path!r} has embed_dim={embed_dim}, depth={depth} but the model has "
            f"embed_dim={model.embed_dim}, depth={model.n_blocks}"
        )
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict and not _is_optional(k))
    unexpected = sorted(k for k in state_dict if k not in expected and not _is_optional(k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        raise ValueError(f"DINOv3 checkpoint {path!r} does not match the model: " + "; ".join(parts))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(f"DINOv3 checkpoint {path!r} has shape mismatches: {_format_keys(mismatched)}")
    for key, tensor in state_dict.items():
        if key.endswith("bias_mask") and not torch.isfinite(tensor).all():
            raise ValueError(f"DINOv3 checkpoint {path!r} has a non-finite {key} (uninitialised bias mask)")


def load_dinov3_weights(model: DinoVisionTransformer, path: PathLike) -> None:
    """Load official (Meta) or Hugging Face DINOv3 ViT weights into ``model``, strictly.

    The format is detected from the path and the key names. For HF checkpoints the RoPE periods
    are recomputed from ``config.json``'s ``rope_theta`` (or the model's base without a config).
    Keys matching :data:`OPTIONAL_KEY_PATTERNS` may be absent on either side; absent model keys
    keep their initial values.

    Args:
        model: the backbone to fill (its ``requires_grad`` flags are kept).
        path: ``.pth``/``.pt`` file, ``.safetensors`` file or HF model directory.
    """
    path = os.fspath(path)
    state_dict, hf_config = read_dinov3_checkpoint(path)
    if is_hf_state_dict(state_dict):
        state_dict = convert_hf_state_dict(state_dict, path=path)
        base = float(hf_config.get("rope_theta", model.rope_embed.base)) if hf_config else model.rope_embed.base
        state_dict["rope_embed.periods"] = compute_rope_periods(head_dim=model.rope_embed.head_dim, base=base)
        logger.info("Loading Hugging Face-format DINOv3 weights from %s (RoPE base %s)", path, base)
    else:
        logger.info("Loading official-format DINOv3 weights from %s", path)
    _check_compatible(model, state_dict, path)
    # Only optional keys can still be missing or unexpected here; strict=False skips them.
    model.load_state_dict(state_dict, strict=False)

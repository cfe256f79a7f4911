"""Hugging Face ``DINOv3ViTModel`` format: key names both ways and ``config.json``.

Official (Meta) and HF checkpoints hold the same tensors under other names: ``storage_tokens`` is
``embeddings.register_tokens``, ``blocks.i`` is ``layer.i`` (``model.layer.i`` in the module tree of
transformers 5), the fused ``qkv`` is split into ``q_proj/k_proj/v_proj`` (HF drops the k bias, which
the official model masks to zero), ``ls1.gamma`` is ``layer_scale1.lambda1``, the MLP ``fc1/fc2`` is
``up_proj/down_proj`` and the SwiGLU ``w1/w2/w3`` is ``gate_proj/up_proj/down_proj``. HF files have no
RoPE periods: they are computed from ``config.json``'s ``rope_theta``.
"""
import logging
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from torch import Tensor

from ..modeling.dinov3.vit import LAYER_NORM_EPS, DinoVisionTransformer

logger = logging.getLogger(__name__)

StateDict = Dict[str, Tensor]

# Official activation of each FFN type (Hugging Face ``hidden_act``).
_HF_ACT = {"mlp": "gelu", "swiglu": "silu"}
# Spellings of the same activation in transformers' ACT2FN.
_HF_ACT_ALIASES = {"swish": "silu"}
# The q, k and v projections, in the order of the thirds of the fused official ``qkv`` tensor.
QKV_NAMES = ("q_proj", "k_proj", "v_proj")
# The third of the fused qkv bias that HF checkpoints leave out (the official model masks it to 0).
K_BIAS_CHUNK = QKV_NAMES.index("k_proj")

_HF_LAYER_RE = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_HF_QKV_RE = re.compile(r"^attention\.([qkv]_proj)$")
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
_HF_MASK_TOKEN = "embeddings.mask_token"
_HF_GATE_RE = re.compile(r"^(?:model\.)?layer\.\d+\.mlp\.gate_proj\.")

# config.json fields compared with the model, with the value transformers' DINOv3ViTConfig takes when
# the file leaves one out (transformers 5.x defaults). Every other field is ignored because it does
# not change the features of a frozen backbone in eval mode: initialisation (initializer_range,
# layerscale_value), training-only dropout, stochastic depth and RoPE coordinate augmentation
# (attention_dropout, drop_path_rate, pos_embed_shift, pos_embed_jitter, pos_embed_rescale), the
# default input size (image_size: RoPE works at any size), the HF Backbone API (out_features,
# out_indices, stage_names, apply_layernorm, reshape_hidden_states) and bookkeeping (architectures,
# dtype / torch_dtype, transformers_version, ...).
_HF_CONFIG_DEFAULTS: Dict[str, Any] = {
    "model_type": "dinov3_vit",
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "hidden_act": "gelu",
    "use_gated_mlp": False,
    "layer_norm_eps": 1e-5,
    "rope_theta": 100.0,
    "patch_size": 16,
    "num_channels": 3,
    "query_bias": True,
    "key_bias": False,
    "value_bias": True,
    "proj_bias": True,
    "mlp_bias": True,
    "num_register_tokens": 0,
}


class OfficialKey(NamedTuple):
    """Where a Hugging Face tensor goes in the official state dict.

    Attributes:
        key: official key name.
        chunk: for a q/k/v projection, the third (0, 1, 2 along dim 0) of the fused ``qkv`` tensor
            it fills; None for a whole tensor.
    """

    key: str
    chunk: Optional[int] = None


def is_hf_state_dict(keys: Mapping[str, Any]) -> bool:
    """True if the keys follow the Hugging Face ``DINOv3ViTModel`` naming.

    Args:
        keys: a state dict, or any mapping / set of its key names.
    """
    return any(key.startswith("embeddings.") or _HF_LAYER_RE.match(key) for key in keys)


def has_gated_mlp(keys: Mapping[str, Any]) -> bool:
    """True if HF-named ``keys`` hold a SwiGLU feed-forward (``mlp.gate_proj``)."""
    return any(_HF_GATE_RE.match(key) for key in keys)


def official_key(key: str, *, gated: bool) -> OfficialKey:
    """Official name of a Hugging Face ``DINOv3ViTModel`` key.

    Unknown keys come back unchanged (the strict loader reports them).

    Args:
        key: HF key (``layer.i.*`` or ``model.layer.i.*``).
        gated: the checkpoint has a SwiGLU feed-forward (see :func:`has_gated_mlp`).

    Returns:
        The official key, and the qkv third it fills for a q/k/v projection.
    """
    if key in _HF_TOP_RENAMES:
        return OfficialKey(_HF_TOP_RENAMES[key])
    if key == _HF_MASK_TOKEN:
        return OfficialKey("mask_token")
    match = _HF_LAYER_RE.match(key)
    if match is None:
        return OfficialKey(key)
    layer, rest = match.groups()
    prefix = f"blocks.{layer}."
    module, _, param = rest.rpartition(".")
    qkv = _HF_QKV_RE.match(module)
    if qkv:
        return OfficialKey(f"{prefix}attn.qkv.{param}", QKV_NAMES.index(qkv.group(1)))
    if module in _HF_LAYER_RENAMES:
        return OfficialKey(f"{prefix}{_HF_LAYER_RENAMES[module]}.{param}")
    if rest in _HF_LAYER_RENAMES:
        return OfficialKey(prefix + _HF_LAYER_RENAMES[rest])
    if module.startswith("mlp."):
        renames = _HF_SWIGLU_RENAMES if gated else _HF_MLP_RENAMES
        name = module[len("mlp.") :]
        return OfficialKey(f"{prefix}mlp.{renames.get(name, name)}.{param}")
    return OfficialKey(key)


def official_shape(key: str, shape: List[int]) -> List[int]:
    """Shape a Hugging Face tensor has under its official name (the HF mask token ``[1, 1, D]`` is ``[1, D]``)."""
    return list(shape[1:]) if key == _HF_MASK_TOKEN else list(shape)


def convert_to_hf_state_dict(state_dict: Mapping[str, Tensor], *, layer_prefix: str = "layer.") -> StateDict:
    """Rename an official-format DINOv3 state dict to Hugging Face ``DINOv3ViTModel`` keys.

    The masked k bias is dropped (HF has no k bias); ``rope_embed.periods``, ``bias_mask`` and
    ``local_cls_norm`` have no HF counterpart and are dropped too.

    Args:
        state_dict: official key names (any subset of a model's keys).
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
            out[_HF_MASK_TOKEN] = value.reshape(1, 1, -1)  # [1, D] -> [1, 1, D]
        elif key == "rope_embed.periods" or key.startswith("local_cls_norm.") or key.endswith("bias_mask"):
            continue
        elif match is None:
            raise ValueError(f"No Hugging Face equivalent for DINOv3 key {key!r}")
        else:
            layer, rest = match.groups()
            prefix = f"{layer_prefix}{layer}."
            module, _, param = rest.rpartition(".")
            if module == "attn.qkv":
                for chunk, (name, part) in enumerate(zip(QKV_NAMES, value.chunk(len(QKV_NAMES), dim=0))):
                    if not (param == "bias" and chunk == K_BIAS_CHUNK):
                        out[f"{prefix}attention.{name}.{param}"] = part.clone()
            elif rest in layer_renames:
                out[prefix + layer_renames[rest]] = value
            elif module in layer_renames:
                out[f"{prefix}{layer_renames[module]}.{param}"] = value
            elif module.startswith("mlp."):
                out[f"{prefix}mlp.{mlp_renames[module[len('mlp.'):]]}.{param}"] = value
            else:
                raise ValueError(f"No Hugging Face equivalent for DINOv3 key {key!r}")
    return out


def _architecture(model: DinoVisionTransformer) -> Dict[str, Any]:
    """The compared ``config.json`` fields (:data:`_HF_CONFIG_DEFAULTS`) of ``model``."""
    block = model.blocks[0]
    gated = hasattr(block.mlp, "w1")
    hidden = block.mlp.w1.out_features if gated else block.mlp.fc1.out_features
    ffn_bias = (block.mlp.w1 if gated else block.mlp.fc1).bias is not None
    qkv_bias = block.attn.qkv.bias is not None
    return {
        "model_type": "dinov3_vit",
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


def _has_layerscale(model: DinoVisionTransformer) -> bool:
    return getattr(model.blocks[0].ls1, "gamma", None) is not None


def hf_config_from_model(model: DinoVisionTransformer) -> Dict[str, Any]:
    """``config.json`` content of the Hugging Face ``DINOv3ViTModel`` equivalent to ``model``."""
    if not _has_layerscale(model):
        raise ValueError("Hugging Face DINOv3 models always have LayerScale; this model has none")
    return {"architectures": ["DINOv3ViTModel"], **_architecture(model)}


def _normalized(field: str, value: Any) -> Any:
    """A config value in the form :func:`_architecture` gives it (square patch lists, act aliases)."""
    if field == "patch_size" and isinstance(value, (list, tuple)) and len(set(value)) == 1:
        return value[0]
    if field == "hidden_act":
        return _HF_ACT_ALIASES.get(value, value)
    return value


def check_hf_config(model: DinoVisionTransformer, config: Mapping[str, Any], *, path: str) -> None:
    """Raise if a Hugging Face ``config.json`` describes another network than ``model``.

    Every field in :data:`_HF_CONFIG_DEFAULTS` is compared; a field the file leaves out takes
    transformers' default, as ``DINOv3ViTModel.from_pretrained`` would. HF models always have
    LayerScale, so a model without it never matches.

    Args:
        model: the model being loaded.
        config: the parsed ``config.json``.
        path: the file, for the error message.

    Raises:
        ValueError: naming every mismatching field with the file's and the model's values.
    """
    ours = _architecture(model)
    mismatches = []
    for field, default in _HF_CONFIG_DEFAULTS.items():
        theirs = _normalized(field, config.get(field, default))
        if theirs != ours[field]:
            note = "" if field in config else " (transformers' default: not in the file)"
            mismatches.append(f"{field}: {theirs!r}{note} in config.json vs {ours[field]!r} in the model")
    if not _has_layerscale(model):
        mismatches.append("LayerScale: always present in DINOv3ViTModel vs none in the model")
    if mismatches:
        raise ValueError(
            f"Hugging Face config {path!r} does not describe the DINOv3 model being loaded: " + "; ".join(mismatches)
        )

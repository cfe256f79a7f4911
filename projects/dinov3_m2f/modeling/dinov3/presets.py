"""Architectures of the released DINOv3 ViTs, adapter interaction indexes and input normalisation."""
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .vit import LAYER_NORM_EPS, DinoVisionTransformer

# Settings shared by every released DINOv3 ViT (dinov3/hub/backbones.py).
_COMMON: Dict[str, Any] = {
    "patch_size": 16,
    "in_chans": 3,
    "qkv_bias": True,
    "proj_bias": True,
    "ffn_bias": True,
    "n_storage_tokens": 4,
    "layerscale_init": 1e-5,
    "mask_k_bias": True,
    "rope_base": 100.0,
}

DINOV3_PRESETS: Dict[str, Dict[str, Any]] = {
    "vits16": {**_COMMON, "embed_dim": 384, "depth": 12, "num_heads": 6, "ffn_ratio": 4.0, "ffn_layer": "mlp"},
    "vits16plus": {**_COMMON, "embed_dim": 384, "depth": 12, "num_heads": 6, "ffn_ratio": 6.0, "ffn_layer": "swiglu"},
    "vitb16": {**_COMMON, "embed_dim": 768, "depth": 12, "num_heads": 12, "ffn_ratio": 4.0, "ffn_layer": "mlp"},
    "vitl16": {**_COMMON, "embed_dim": 1024, "depth": 24, "num_heads": 16, "ffn_ratio": 4.0, "ffn_layer": "mlp"},
    "vitl16plus": {
        **_COMMON, "embed_dim": 1024, "depth": 24, "num_heads": 16, "ffn_ratio": 6.0, "ffn_layer": "swiglu",
    },
    "vith16plus": {
        **_COMMON, "embed_dim": 1280, "depth": 32, "num_heads": 20, "ffn_ratio": 6.0, "ffn_layer": "swiglu",
    },
    "vit7b16": {
        **_COMMON,
        "embed_dim": 4096,
        "depth": 40,
        "num_heads": 32,
        "ffn_ratio": 3.0,
        "ffn_layer": "swiglu64",
        "qkv_bias": False,
        "untie_global_and_local_cls_norm": True,
    },
}
# Note: the SAT-493M ViT-L checkpoint also carries ``local_cls_norm``; the loader accepts it either way.

# 0-based block indices whose outputs feed the ViT-Adapter (official segmentation configs).
INTERACTION_INDEXES: Dict[str, List[int]] = {
    "vits16": [2, 5, 8, 11],
    "vits16plus": [2, 5, 8, 11],
    "vitb16": [2, 5, 8, 11],
    "vitl16": [4, 11, 17, 23],
    "vitl16plus": [4, 11, 17, 23],
    "vith16plus": [7, 15, 23, 31],
    "vit7b16": [9, 19, 29, 39],
}

# Per-pretraining-dataset (mean, std) of the RGB input on the 0..1 scale.
NORMALIZATION: Dict[str, Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = {
    "lvd1689m": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "sat493m": ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143)),
}

# Official constructor arguments with training-only effects, ignored for a frozen backbone.
_OFFICIAL_TRAINING_ONLY = ("img_size", "drop_path_rate", "pos_embed_rope_rescale_coords", "device")
# Official constructor arguments that must keep the value every released model uses.
_OFFICIAL_REQUIRED_VALUES: Dict[str, Any] = {
    "pos_embed_rope_min_period": None,
    "pos_embed_rope_max_period": None,
    "pos_embed_rope_normalize_coords": "separate",
    "pos_embed_rope_shift_coords": None,
    "pos_embed_rope_jitter_coords": None,
    "pos_embed_rope_dtype": "fp32",
    "norm_layer": "layernormbf16",
    "untie_cls_and_patch_norms": False,
}
# Official argument name -> our argument name, for arguments with the same meaning.
_OFFICIAL_RENAMES = {"pos_embed_rope_base": "rope_base"}
_OFFICIAL_SAME_NAME = (
    "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "ffn_ratio", "ffn_layer", "qkv_bias",
    "proj_bias", "ffn_bias", "n_storage_tokens", "layerscale_init", "mask_k_bias", "untie_global_and_local_cls_norm",
)


def _unknown_name_error(kind: str, name: str, valid: Mapping[str, Any]) -> ValueError:
    return ValueError(f"Unknown DINOv3 {kind} {name!r}; valid names: {', '.join(sorted(valid))}")


def build_dinov3(name: Optional[str] = None, **overrides: Any) -> DinoVisionTransformer:
    """Build a DINOv3 ViT from a preset name, optionally overriding constructor arguments.

    Args:
        name: a key of :data:`DINOV3_PRESETS`, or None to pass every argument in ``overrides``
            (e.g. tiny models for tests).
        **overrides: keyword arguments of :class:`DinoVisionTransformer` (e.g. ``frozen``,
            ``autocast_dtype``, ``depth``).

    Returns:
        The model (randomly initialised; load weights with ``load_dinov3_weights``, or build a
        frozen ViT straight from a checkpoint with ``build_frozen_dinov3``).
    """
    if name is None:
        kwargs = dict(overrides)
    elif name in DINOV3_PRESETS:
        kwargs = {**DINOV3_PRESETS[name], **overrides}
    else:
        raise _unknown_name_error("preset", name, DINOV3_PRESETS)
    return DinoVisionTransformer(**kwargs)


def get_normalization(name: str) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    """``(mean, std)`` on the 0..1 scale for a pretraining dataset name (case-insensitive).

    Args:
        name: ``"lvd1689m"`` (web images) or ``"sat493m"`` (satellite images).
    """
    key = name.lower()
    if key not in NORMALIZATION:
        raise _unknown_name_error("normalization (pretraining dataset)", name, NORMALIZATION)
    return NORMALIZATION[key]


def get_interaction_indexes(name: str) -> List[int]:
    """Adapter interaction block indexes of a preset."""
    if name not in INTERACTION_INDEXES:
        raise _unknown_name_error("preset", name, INTERACTION_INDEXES)
    return list(INTERACTION_INDEXES[name])


def kwargs_from_official_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Translate keyword arguments of the official ``DinoVisionTransformer`` into ours.

    Training-only arguments are dropped; arguments whose value changes the network in a way this
    implementation does not support raise an error.

    Args:
        config: official constructor kwargs (e.g. the ``config`` of the reference fixtures).

    Returns:
        kwargs for :class:`DinoVisionTransformer` / :func:`build_dinov3` (``name=None``).
    """
    known = set(_OFFICIAL_TRAINING_ONLY) | set(_OFFICIAL_REQUIRED_VALUES) | set(_OFFICIAL_RENAMES)
    known |= set(_OFFICIAL_SAME_NAME)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"Unsupported official DINOv3 config keys: {unknown}")
    for key, required in _OFFICIAL_REQUIRED_VALUES.items():
        if key in config and config[key] != required:
            raise ValueError(
                f"Official config {key}={config[key]!r} is not supported (only {required!r}; "
                f"LayerNorm eps is fixed to {LAYER_NORM_EPS})"
            )
    kwargs = {ours: config[theirs] for theirs, ours in _OFFICIAL_RENAMES.items() if theirs in config}
    kwargs.update({key: config[key] for key in _OFFICIAL_SAME_NAME if key in config})
    return kwargs

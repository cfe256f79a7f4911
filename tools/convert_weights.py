#!/usr/bin/env python3
"""Convert another project's checkpoint to this project's Detectron2 model.

``--from dinov3`` (default): an official DINOv3 Mask2Former segmentor checkpoint. Input (detected automatically, read with ``torch.load(weights_only=True)``; a raw state dict or one
wrapped in ``"model"`` / ``"state_dict"``):

* a released head checkpoint ``*_m2f_head-*.pth``: adapter + head, keys ``segmentation_model.0.*``
  (adapter) and ``segmentation_model.1.*`` (head), no backbone;
* a full segmentor state dict, which also holds the ViT (``segmentation_model.0.backbone.*``).

Output: ``{"model": state_dict, "checkpoint_kind": ...}`` with the key names of
``DINOv3Mask2Former``: adapter ``backbone.adapter.*``, ViT ``backbone.adapter.backbone.*`` (only
with ``--include-backbone``), head ``sem_seg_head.*``. Without the ViT the file is a "trainable"
checkpoint: load it with ``train.init_checkpoint`` and give the ViT through
``model.backbone.weights``.

``--class-merge mapping.json`` adds the head's class merge (ADE20K-150 -> N classes, see
``dinov3_m2f.modeling.class_merge``) and prints the config fields to set.

``--from mask2former``: a Mask2Former model-zoo checkpoint (facebookresearch/Mask2Former; a
Detectron2 ``.pkl``, read with an unpickler that only rebuilds numpy arrays and plain containers
and refuses anything else before it runs, or a ``.pth``). Its transformer decoder and pixel
decoder (deformable encoder, FPN output convolution, mask features) map onto our head; the
modules that read backbone features (input projections, FPN laterals: their channels are the
original backbone's), the original backbone and whatever else does not fit are skipped and
listed (see ``dinov3_m2f.weights.mask2former``). With ``--config-file`` the keys are also
checked against that config's head: a key it lacks or with another shape (``class_embed`` for
another class count) is skipped. Output: ``{"model": sem_seg_head.* tensors, "checkpoint_kind":
"partial", "converted_from": "mask2former", "skipped": {original key: reason},
"uninitialized": [our head keys it leaves unset (with --config-file)]}``. Such a file leaves
modules unset, so it is loaded through the explicit partial-initialisation switch:
``train.init_checkpoint=<output> train.init_partial=True`` (loading is strict by default; with
the switch the matching weights are loaded and what was skipped is logged).

Examples:
    python tools/convert_weights.py dinov3_vit7b16_ade20k_m2f_head.pth out/m2f_head_converted.pth
    python tools/convert_weights.py head.pth out/merged.pth --class-merge configs/my_merge.json
    python tools/convert_weights.py --from mask2former model_final_6b4a3a.pkl out/m2f_init.pth \
        --config-file configs/ade20k/m2f_vitl16_lvd1689m_512.py
    python tools/train_net.py --config-file configs/ade20k/m2f_vitl16_lvd1689m_512.py \
        train.init_checkpoint=out/m2f_init.pth train.init_partial=True
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from dinov3_m2f.listing import MAX_LISTED
from dinov3_m2f.modeling.class_merge import OLD_TO_NEW_KEY, load_class_merge
from dinov3_m2f.weights.mask2former import Mask2FormerConversion, convert_mask2former_state_dict
from dinov3_m2f.weights.official_head import (
    BACKBONE_PREFIX,
    convert_official_head_state_dict,
    convert_official_segmentor_state_dict,
)
from dinov3_m2f.weights.files import PICKLE_EXTENSIONS, safe_numpy_pickle_load, safe_torch_load
from dinov3_m2f.weights.head_check import check_official_head
from dinov3_m2f.atomic_files import atomic_torch_save

logger = logging.getLogger("convert_weights")

# Key prefixes of the Detectron2 model (DINOv3Mask2Former -> D2DINOv3Backbone -> DINOv3Adapter).
D2_ADAPTER_PREFIX = "backbone.adapter."
D2_VIT_PREFIX = D2_ADAPTER_PREFIX + "backbone."
D2_HEAD_PREFIX = "sem_seg_head."
D2_CLASS_MERGE_KEY = D2_HEAD_PREFIX + "class_merge." + OLD_TO_NEW_KEY
# Checkpoints may wrap the state dict under one of these keys.
WRAPPER_KEYS = ("model", "state_dict")
OFFICIAL_KEY_PREFIX = "segmentation_model."
SOURCES = ("dinov3", "mask2former")

StateDict = Dict[str, torch.Tensor]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint to convert: official DINOv3 head or segmentor "
                        "(.pth), or with --from mask2former a Mask2Former checkpoint (.pkl or .pth)")
    parser.add_argument("output", help="converted checkpoint to write (.pth)")
    parser.add_argument("--from", dest="source", choices=SOURCES, default="dinov3",
                        help="the project the checkpoint comes from; a mask2former conversion is a "
                        "partial head: train from it with train.init_checkpoint=<output> "
                        "train.init_partial=True")
    parser.add_argument("--config-file", default=None,
                        help="--from mask2former: check the keys against this config's head")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="--from mask2former: overrides of --config-file, key=value (last option)")
    parser.add_argument(
        "--include-backbone",
        action="store_true",
        help="also store the frozen ViT (the input must be a full segmentor state dict)",
    )
    parser.add_argument(
        "--class-merge",
        metavar="MAPPING_JSON",
        help='merge classes: {"classes": [{"name": ..., "merge": [old ids, 0-based]}, ...]}',
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    if args.source == "mask2former" and (args.include_backbone or args.class_merge):
        parser.error("--include-backbone and --class-merge convert official DINOv3 checkpoints only")
    if args.source == "dinov3" and (args.config_file or args.opts):
        parser.error("--config-file and --opts are used with --from mask2former only")
    return args


def load_official_state_dict(path: str) -> StateDict:
    """Read a checkpoint and return its official state dict (unwrapped, tensors only).

    Args:
        path: checkpoint file.

    Returns:
        The state dict with ``segmentation_model.*`` keys.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input checkpoint {path} does not exist")
    loaded: Any = safe_torch_load(path)
    if not isinstance(loaded, dict):
        raise ValueError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    for wrapper in WRAPPER_KEYS:
        if isinstance(loaded.get(wrapper), dict):
            logger.info("Using the state dict under %r of %s", wrapper, path)
            loaded = loaded[wrapper]
            break
    keys = [k for k in loaded if isinstance(k, str)]
    if keys and all(k.startswith((D2_ADAPTER_PREFIX, D2_HEAD_PREFIX)) for k in keys):
        raise ValueError(f"checkpoint {path} already has this project's key names; nothing to convert")
    foreign = [k for k in loaded if not (isinstance(k, str) and k.startswith(OFFICIAL_KEY_PREFIX))]
    if not loaded or foreign:
        raise ValueError(
            f"checkpoint {path} is not an official DINOv3 segmentor checkpoint: expected only "
            f"'{OFFICIAL_KEY_PREFIX}0.*' (adapter) and '{OFFICIAL_KEY_PREFIX}1.*' (head) keys, "
            f"found {len(foreign)} others, e.g. {[str(k) for k in foreign[:MAX_LISTED]]}"
        )
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"checkpoint {path}: values of {not_tensors[:MAX_LISTED]} are not tensors")
    return loaded


def to_d2_state_dict(sections: Mapping[str, StateDict], *, include_backbone: bool) -> StateDict:
    """Prefix the converted sections with the Detectron2 model's module names.

    Args:
        sections: output of ``convert_official_{segmentor,head}_state_dict``.
        include_backbone: keep the ViT keys (``sections["backbone"]``).

    Returns:
        State dict of ``DINOv3Mask2Former``.
    """
    prefixes = {"adapter": D2_ADAPTER_PREFIX, "head": D2_HEAD_PREFIX}
    if include_backbone:
        prefixes["backbone"] = D2_VIT_PREFIX
    return {prefix + key: value for name, prefix in prefixes.items() for key, value in sections[name].items()}


def convert(
    input_path: str, *, include_backbone: bool = False, class_merge_path: Optional[str] = None
) -> Tuple[StateDict, List[str]]:
    """Convert ``input_path`` to our key names.

    Args:
        input_path: official checkpoint.
        include_backbone: keep the ViT (the input must be a full segmentor state dict).
        class_merge_path: optional class-merge JSON file.

    Returns:
        (state dict, lines describing the config fields to set).
    """
    official = load_official_state_dict(input_path)
    is_full = any(k.startswith(BACKBONE_PREFIX) for k in official)
    try:
        sections = (convert_official_segmentor_state_dict if is_full else convert_official_head_state_dict)(official)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{input_path}: {e}") from e
    if not is_full:
        if include_backbone:
            raise ValueError(
                f"--include-backbone: {input_path} is a head-only checkpoint without "
                f"'{BACKBONE_PREFIX}*' keys; give the ViT with model.backbone.weights instead"
            )
    logger.info(
        "%s: %s checkpoint, %d adapter, %d head%s keys",
        input_path,
        "full segmentor" if is_full else "head-only",
        len(sections["adapter"]),
        len(sections["head"]),
        f", {len(sections['backbone'])} backbone" if is_full else "",
    )
    level_embed = sections["adapter"].get("level_embed")  # [levels, D]
    if level_embed is None or level_embed.dim() != 2:
        raise ValueError(f"{input_path}: the adapter has no [levels, D] 'level_embed' (got "
                         f"{None if level_embed is None else tuple(level_embed.shape)})")
    embed_dim = level_embed.shape[1]
    # The whole head is checked before any size is given as config advice.
    sizes = check_official_head(sections["head"], embed_dim=embed_dim, path=input_path)
    state_dict = to_d2_state_dict(sections, include_backbone=include_backbone)
    config = [
        f"model.sem_seg_head.input_shape.channels = {embed_dim}",
        f"model.sem_seg_head.hidden_dim = {sizes['hidden_dim']}",
        f"model.sem_seg_head.num_queries = {sizes['num_queries']}",
        f"model.sem_seg_head.dec_layers = {sizes['dec_layers']}",
    ]
    if class_merge_path is None:
        config.append(f"model.num_classes = {sizes['num_classes']}")
        return state_dict, config
    merge = load_class_merge(class_merge_path, num_old_classes=sizes["num_classes"])
    state_dict[D2_CLASS_MERGE_KEY] = merge.old_to_new.clone()
    config += [
        f"model.num_classes = {merge.num_classes}  # merged classes: {merge.class_names}",
        f"model.sem_seg_head.num_classes = {sizes['num_classes']}  # the predictor's classes before merging",
        f'model.sem_seg_head.class_merge = L(load_class_merge)(path="{class_merge_path}", '
        f"num_old_classes={sizes['num_classes']})  # from dinov3_m2f.modeling.class_merge",
        f"dataset: {merge.num_classes} classes in the mapping file's order",
    ]
    return state_dict, config


def load_mask2former_state_dict(path: str) -> StateDict:
    """Read a Mask2Former checkpoint (``.pkl`` of numpy arrays, or ``.pth``) as tensors.

    Args:
        path: checkpoint file; its state dict may be wrapped under ``"model"``.

    Returns:
        The state dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input checkpoint {path} does not exist")
    if path.endswith(PICKLE_EXTENSIONS):
        loaded: Any = safe_numpy_pickle_load(path, what="Mask2Former checkpoint")
    else:
        loaded = safe_torch_load(path, what="Mask2Former checkpoint")
    if not isinstance(loaded, dict):
        raise ValueError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    if isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    bad = [k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, (np.ndarray, torch.Tensor))]
    if bad:
        raise ValueError(f"checkpoint {path}: {len(bad)} entries are not named arrays, e.g. {bad[:MAX_LISTED]}")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in loaded.items()}


def mask2former_target_shapes(config_file: str, overrides: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """State-dict shapes of the head ``cfg.model.sem_seg_head`` of a config (built on CPU)."""
    from detectron2.config import instantiate

    from dinov3_m2f.d2.config import load_config

    head = instantiate(load_config(config_file, overrides=overrides).model.sem_seg_head)
    return {key: tuple(value.shape) for key, value in head.state_dict().items()}


def report_mask2former(conversion: Mask2FormerConversion) -> List[str]:
    """Lines listing what was skipped and left uninitialised (backbone keys summarised)."""
    lines = []
    outside = [k for k in conversion.skipped if not k.startswith(D2_HEAD_PREFIX)]
    for key, reason in conversion.skipped.items():
        if key.startswith(D2_HEAD_PREFIX):
            lines.append(f"  skipped {key}: {reason}")
    if outside:
        lines.append(f"  skipped {len(outside)} keys outside the head, e.g. {outside[:MAX_LISTED]}")
    for key in conversion.uninitialized:
        lines.append(f"  not in the checkpoint (keeps its initialisation): {D2_HEAD_PREFIX}{key}")
    return lines


def convert_mask2former(args: argparse.Namespace) -> int:
    """``--from mask2former``: write the converted head and list what was skipped."""
    target = mask2former_target_shapes(args.config_file, args.opts) if args.config_file else None
    conversion = convert_mask2former_state_dict(load_mask2former_state_dict(args.input), target_shapes=target)
    if not conversion.state_dict:
        raise ValueError(f"nothing in {args.input} fits the target head; see the skipped keys")
    data: Dict[str, Any] = {
        "model": {D2_HEAD_PREFIX + k: v for k, v in conversion.state_dict.items()},
        "checkpoint_kind": "partial",
        "converted_from": "mask2former",
        "skipped": dict(conversion.skipped),
    }
    if target is not None:
        data["uninitialized"] = [D2_HEAD_PREFIX + k for k in conversion.uninitialized]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_torch_save(data, args.output)
    print(f"Converted {args.input} -> {args.output}: {len(conversion.state_dict)} head tensors, "
          f"{len(conversion.skipped)} keys skipped:")
    for line in report_mask2former(conversion):
        print(line)
    print("Load it as a partial initialisation (the ViT, the adapter and every module above start "
          f"from their initialisation): train.init_checkpoint=\"{args.output}\" train.init_partial=True")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise ValueError(f"output {args.output} must differ from the input")
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"output {args.output} exists; pass --overwrite to replace it")
    if args.source == "mask2former":
        return convert_mask2former(args)
    state_dict, config = convert(
        args.input, include_backbone=args.include_backbone, class_merge_path=args.class_merge
    )
    kind = "full" if args.include_backbone else "trainable"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_torch_save({"model": state_dict, "checkpoint_kind": kind}, args.output)
    logger.info("Wrote %s checkpoint with %d keys to %s", kind, len(state_dict), args.output)
    print(f"Converted {args.input} -> {args.output}. Config fields to set:")
    for line in config:
        print("  " + line)
    print(f"  train.init_checkpoint = \"{args.output}\"")
    if not args.include_backbone:
        print("  model.backbone.weights = <the DINOv3 backbone weights the head was trained with>")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every LazyConfig under configs/ loads; every leaf config instantiates (with a tiny backbone
and head instead of the real sizes; the per-pixel synthetic configs are tiny already), is
consistent with its data, and saves as plain YAML."""
import glob
import os

import pytest
from helpers import REPO

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.solver import LRMultiplier  # noqa: E402
from fvcore.common.param_scheduler import ParamScheduler  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from dinov3_m2f.d2 import D2DINOv3Backbone, DINOv3Mask2Former, DINOv3PixelSegmentor  # noqa: E402
from dinov3_m2f.d2.config import load_config  # noqa: E402
from dinov3_m2f.modeling.adapter import Extractor  # noqa: E402
from dinov3_m2f.modeling.dinov3 import DINOV3_PRESETS  # noqa: E402
from dinov3_m2f.weights import resolve_frozen_dtype  # noqa: E402

CONFIG_ROOT = os.path.join(REPO, "configs")
ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_ROOT, "**", "*.py"), recursive=True))
LEAF_CONFIGS = [p for p in ALL_CONFIGS if os.sep + "common" + os.sep not in p]
SYNTHETIC_CONFIG = os.path.join(CONFIG_ROOT, "synthetic", "m2f_tiny_synthetic.py")
SEVEN_B_EVAL_CONFIG = os.path.join(CONFIG_ROOT, "ade20k", "m2f_vit7b16_official_head_eval.py")
TINY_DIM = 32


def _name(path: str) -> str:
    return os.path.relpath(path, CONFIG_ROOT)


def _is_mask2former(model_cfg) -> bool:
    return model_cfg._target_ is DINOv3Mask2Former


def _make_tiny(model_cfg) -> None:
    """Replace the backbone and head sizes with tiny ones (no weights file needed)."""
    if not _is_mask2former(model_cfg):
        assert model_cfg.backbone.preset is None, "per-pixel leaf configs are tiny synthetic ones"
        return
    backbone = model_cfg.backbone
    backbone.preset = None
    backbone.weights = None
    backbone.init_seed = 0
    backbone.vit_kwargs = dict(embed_dim=TINY_DIM, depth=4, num_heads=2, patch_size=16)
    backbone.interaction_indexes = [0, 1, 2, 3]
    backbone.adapter_kwargs.conv_inplane = 8
    backbone.adapter_kwargs.deform_num_heads = 2
    head = model_cfg.sem_seg_head
    head.input_shape.channels = TINY_DIM
    head.hidden_dim = TINY_DIM
    head.nheads = 2
    head.num_queries = 4
    head.enc_dim_feedforward = TINY_DIM
    head.dec_dim_feedforward = TINY_DIM
    head.enc_layers = 1
    head.dec_layers = 1


def test_configs_found():
    assert any(p.endswith("synthetic/m2f_tiny_synthetic.py") for p in LEAF_CONFIGS)
    assert len(LEAF_CONFIGS) >= 6


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_name)
def test_every_config_loads(path):
    cfg = LazyConfig.load(path)
    assert len(cfg) > 0


@pytest.mark.parametrize("path", LEAF_CONFIGS, ids=_name)
def test_leaf_config_is_consistent(path):
    cfg = LazyConfig.load(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, f"{_name(path)} has no '{key}'"
    model_cfg = cfg.model
    num_classes = model_cfg.num_classes
    assert num_classes == cfg.dataloader.train.mapper.num_classes
    assert model_cfg.criterion.num_classes == num_classes
    assert model_cfg.sem_seg_head.num_classes == num_classes
    eval_dataset = cfg.dataloader.evaluator.dataset_name
    if isinstance(eval_dataset, str):
        classes = MetadataCatalog.get(eval_dataset).stuff_classes
    else:  # a folder dataset: the registering call itself, with its class list
        classes = eval_dataset.class_names
    assert len(classes) == num_classes
    preset = model_cfg.backbone.preset
    if preset is not None and _is_mask2former(model_cfg):
        # the head's input width must be the preset ViT's width
        assert model_cfg.sem_seg_head.input_shape.channels == DINOV3_PRESETS[preset]["embed_dim"]
        # weights of the family whose normalization is used
        assert model_cfg.normalization in os.path.basename(model_cfg.backbone.weights)
    assert 0 < cfg.lr_multiplier.warmup_length < 1


@pytest.mark.parametrize("path", LEAF_CONFIGS, ids=_name)
def test_leaf_config_instantiates_tiny(path, tmp_path):
    cfg = LazyConfig.load(path)
    _make_tiny(cfg.model)
    model = instantiate(cfg.model)
    assert model.num_classes == cfg.dataloader.train.mapper.num_classes
    if _is_mask2former(cfg.model):
        assert isinstance(model, DINOv3Mask2Former)
        assert set(model.criterion.weight_dict) >= {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0"}
    else:
        assert isinstance(model, DINOv3PixelSegmentor)

    # the frozen ViT's weights are stored in the config's vit_dtype (float32 by default)
    vit_dtype = resolve_frozen_dtype(cfg.model.backbone.get("vit_dtype", "float32"))
    assert model.backbone.vit.blocks[0].attn.qkv.weight.dtype == vit_dtype

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, torch.optim.AdamW)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.backbone.vit.parameters()}
    scheduler = instantiate(cfg.lr_multiplier)
    assert isinstance(scheduler, ParamScheduler)
    LRMultiplier(optimizer, multiplier=scheduler, max_iter=cfg.train.max_iter)

    # Plain YAML (no lambdas or objects that force the pickle fallback).
    cfg.optimizer.params.model = None
    out = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, out)
    assert not os.path.exists(out + ".pkl")
    assert LazyConfig.load(out).train.max_iter == cfg.train.max_iter


@pytest.mark.parametrize(
    "path", [p for p in LEAF_CONFIGS if LazyConfig.load(p).model.backbone._target_ is D2DINOv3Backbone], ids=_name
)
def test_adapter_checkpointing_and_vit_dtype_are_config_keys(path):
    # the override checker rejects unknown keys of plain dicts such as adapter_kwargs
    cfg = load_config(path, overrides=["model.backbone.adapter_kwargs.with_cp=True",
                                       "model.backbone.vit_dtype=float16"])
    assert cfg.model.backbone.adapter_kwargs.with_cp is True
    assert cfg.model.backbone.vit_dtype == "float16"


VITL_BASE = os.path.join(CONFIG_ROOT, "common", "m2f_vitl16_base.py")
VITL_LEAVES = [p for p in LEAF_CONFIGS if LazyConfig.load(p).model.backbone.get("preset") == "vitl16"]
# What a ViT-L leaf states on top of the base, besides its dataloader (from common/data/): the
# weights (and their normalization), the evaluation window, max_iter and where the run goes.
VITL_LEAF_KEYS = {
    "model.backbone.weights", "model.normalization", "model.slide_crop_size", "model.slide_stride",
    "model.slide_batch", "train.max_iter", "train.output_dir",
}


def _flat(node, prefix=""):
    """A nested container as {dotted key: value} (lists are values)."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


def test_the_vitl_leaves_are_found():
    names = {_name(p) for p in VITL_LEAVES}
    assert names == {
        os.path.join("ade20k", "m2f_vitl16_lvd1689m_512.py"),
        os.path.join("cityscapes", "m2f_vitl16_lvd1689m_512x1024.py"),
        os.path.join("folder", "m2f_vitl16_lvd1689m_512.py"),
        os.path.join("loveda", "m2f_vitl16_sat493m_512.py"),
        os.path.join("loveda", "m2f_vitl16_sat493m_720.py"),
    }


@pytest.mark.parametrize("path", VITL_LEAVES, ids=_name)
def test_a_vitl_leaf_states_only_weights_window_and_max_iter(path):
    base = _flat(OmegaConf.to_container(LazyConfig.load(VITL_BASE), resolve=False))
    leaf = _flat(OmegaConf.to_container(LazyConfig.load(path), resolve=False))
    absent = object()
    changed = {key for key in set(base) | set(leaf)
               if not key.startswith("dataloader.") and base.get(key, absent) != leaf.get(key, absent)}
    assert changed <= VITL_LEAF_KEYS, (
        f"{_name(path)} sets {sorted(changed - VITL_LEAF_KEYS)}: shared settings belong in "
        "configs/common/m2f_vitl16_base.py"
    )
    assert "model.backbone.weights" in changed
    # what follows from the dataset and max_iter is linked, not restated
    assert base["model.num_classes"] == "${dataloader.train.mapper.num_classes}"
    assert leaf["train.eval_period"] == "${period:${.max_iter},10}"
    cfg = load_config(path, overrides=["train.max_iter=20000"])
    assert (cfg.train.eval_period, cfg.train.checkpointer.period) == (2000, 2000)
    assert cfg.lr_multiplier.warmup_length * cfg.train.max_iter == pytest.approx(1500)


def test_with_cp_override_reaches_every_extractor():
    for with_cp in (False, True):
        cfg = load_config(SYNTHETIC_CONFIG, overrides=[f"model.backbone.adapter_kwargs.with_cp={with_cp}"])
        extractors = [m for m in instantiate(cfg.model.backbone).modules() if isinstance(m, Extractor)]
        # one per interaction block, plus the last block's extra extractors
        assert len(extractors) > len(cfg.model.backbone.interaction_indexes)
        assert all(m.with_cp is with_cp for m in extractors)


def test_7b_eval_config_fits_its_memory_target():
    # the GPU target: 7B inference fits in 40 GB with bf16 frozen weights, measured on one window
    model_cfg = LazyConfig.load(SEVEN_B_EVAL_CONFIG).model
    assert resolve_frozen_dtype(model_cfg.backbone.vit_dtype) == torch.bfloat16
    assert model_cfg.slide_batch == 1

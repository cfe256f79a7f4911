"""Config values are checked when the config loads: types and ranges of
``train.*`` and the data fields, with errors naming the key; class names agree with
``num_classes``. The schema itself is core (OmegaConf only); the last tests load real configs."""
import os
import re
import runpy

import pytest
from omegaconf import OmegaConf

from dinov3_m2f.config_schema import ConfigValueError, check_config, check_train
from dinov3_m2f.config_schema import train_defaults

from helpers import REPO  # noqa: E402
COMMON_TRAIN = os.path.join(REPO, "configs", "common", "train.py")
SYNTHETIC = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
FOLDER = os.path.join(REPO, "configs", "folder", "m2f_vitl16_lvd1689m_512.py")


def _train(**changes):
    """``configs/common/train.py``'s ``train`` (a plain dict, no detectron2) with dotted changes."""
    train = OmegaConf.create(runpy.run_path(COMMON_TRAIN)["train"])
    for key, value in changes.items():
        OmegaConf.update(train, key.replace("__", "."), value, force_add=True)
    return train


def test_the_shipped_train_defaults_pass():
    check_train(_train())
    check_train(_train(early_stopping={"patience": 3}, trainable=["head"]))
    check_train(_train(best_checkpoint=None, ddp={"broadcast_buffers": True}))
    check_train(_train(compile=True))
    check_train(_train(compile={"backend": "aot_eager", "dynamic": True}))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"max_iter": "abc"}, r"train\.max_iter: Value 'abc' of type 'str' could not be converted to Integer"),
        ({"max_iter": 1.5}, r"train\.max_iter: Value '1\.5'"),
        ({"max_iter": 0}, r"train\.max_iter must be >= 1, got 0"),
        ({"seed": -1}, r"train\.seed must be >= 0"),
        ({"grad_accum_steps": 0}, r"train\.grad_accum_steps must be >= 1"),
        ({"init_partial": "maybe"}, r"train\.init_partial: Value 'maybe' is not a valid bool"),
        ({"device": "gpu"}, r"train\.device: device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got 'gpu'"),
        ({"early_stopping": {"patience": 0}}, r"train\.early_stopping\.patience must be >= 1"),
        ({"early_stopping": {}}, r"train\.early_stopping\.patience must be set"),
        ({"early_stopping": {"patience": 2}, "best_checkpoint": None},
         r"train\.early_stopping needs train\.best_checkpoint"),
        ({"early_stopping": {"patience": 2}, "eval_period": 0},
         r"train\.early_stopping needs periodic evaluation"),
        ({"amp__dtype": "fp8"}, r"train\.amp\.dtype must be one of \['float16', 'bfloat16'\], got 'fp8'"),
        ({"clip_grad__max_norm": "big"}, r"train\.clip_grad\.max_norm: Value 'big'"),
        ({"checkpointer__period": 0}, r"train\.checkpointer\.period must be >= 1"),
        ({"best_checkpoint__mode": "up"}, r"train\.best_checkpoint\.mode must be one of \['max', 'min'\]"),
        ({"freeze": "backbone"}, r"train\.freeze: .*"),
        ({"max_iterz": 3}, r"train\.max_iterz: not a known key of train"),
        ({"compile": "yes"}, r"train\.compile: compile setting must be a bool or a mapping"),
        ({"compile": {"backend": "aot_eager", "fullgraf": True}}, r"train\.compile: .*takes no \['fullgraf'\]"),
    ],
)
def test_a_wrong_train_value_names_the_key(changes, message):
    with pytest.raises(ConfigValueError, match=message):
        check_train(_train(**changes))


@pytest.mark.parametrize("key", ["max_iter", "amp.dtype", "best_checkpoint.metric"])
def test_a_missing_train_key_is_named(key):
    # the schema has defaults, but a config must state every key: train_net reads cfg.train
    train = _train()
    parent, _, leaf = key.rpartition(".")
    del (OmegaConf.select(train, parent) if parent else train)[leaf]
    with pytest.raises(ConfigValueError, match=rf"train\.{re.escape(key)} must be set"):
        check_train(train)


def test_configs_common_train_holds_the_schema_defaults():
    # one definition: the config file takes every key and value from TrainSchema
    assert runpy.run_path(COMMON_TRAIN)["train"] == train_defaults()


def _data_cfg(**changes):
    cfg = OmegaConf.create({
        "model": {"num_classes": "${dataloader.train.mapper.num_classes}"},
        "dataloader": {
            "train": {"dataset": {"names": "registered_train"}, "total_batch_size": 2, "num_workers": 0,
                      "mapper": {"num_classes": 3, "ignore_label": 255, "max_bad_samples": 10}},
            "test": {"dataset": {"names": {"class_names": ["a", "b", "c"]}}, "num_workers": 0},
        },
    })
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _lookup(name):
    return {"registered_train": ["a", "b", "c"]}.get(name)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dataloader.train.mapper.num_classes": 4},
         r"dataloader\.train\.dataset\.names: the dataset has 3 class names \['a', 'b', 'c'\] but num_classes is 4"),
        ({"dataloader.test.dataset.names.class_names": ["a", "b"]},
         r"dataloader\.test\.dataset\.names: the dataset has 2 class names"),
        ({"model.num_classes": 5}, r"model\.num_classes=5 but dataloader\.train\.mapper\.num_classes=3"),
        ({"dataloader.train.mapper.ignore_label": 2}, r"ignore_label=2 is a class id"),
        ({"dataloader.train.mapper.max_bad_samples": -1}, r"dataloader\.train\.mapper\.max_bad_samples must be >= 0, got -1"),
        ({"dataloader.train.total_batch_size": "x"}, r"dataloader\.train\.total_batch_size must be an int >= 1, got 'x'"),
        ({"dataloader.train.num_workers": True}, r"dataloader\.train\.num_workers must be an int >= 0"),
    ],
)
def test_a_wrong_data_field_names_the_key(changes, message):
    check_config(_data_cfg(), lookup=_lookup)
    with pytest.raises(ConfigValueError, match=message):
        check_config(_data_cfg(**changes), lookup=_lookup)


def test_an_unregistered_dataset_is_checked_when_it_is_registered():
    check_config(_data_cfg(**{"dataloader.train.dataset.names": "not_yet_registered"}), lookup=_lookup)


def test_load_config_checks_overrides_and_dataset_classes():
    pytest.importorskip("detectron2")
    from dinov3_m2f.d2.config import load_config

    with pytest.raises(ConfigValueError, match=r"train\.max_iter: Value 'abc'"):
        load_config(SYNTHETIC, overrides=["train.max_iter=abc"])
    with pytest.raises(ConfigValueError, match=r"the dataset has 7 class names .* but num_classes is 5"):
        load_config(SYNTHETIC, overrides=["dataloader.train.mapper.num_classes=5"])
    with pytest.raises(ConfigValueError, match=r"dataloader\.train\.dataset\.names: the dataset has 3 class names"):
        load_config(FOLDER, overrides=["dataloader.train.dataset.names.class_names=[a,b,c]"])
    cfg = load_config(FOLDER, overrides=["dataloader.train.dataset.names.class_names=[a,b,c]",
                                         "dataloader.train.mapper.num_classes=3"])
    assert cfg.model.num_classes == 3

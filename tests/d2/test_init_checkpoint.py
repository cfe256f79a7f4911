"""Initialisation is strict by default: an init checkpoint that leaves
trainable weights unset or has unexpected keys fails before iteration 0 and lists them;
``train.init_partial=True`` loads the matching weights and logs exactly what was skipped (another
``num_classes``, backbone and adapter only, another project's head)."""
import logging
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402

from dinov3_m2f.training import frozen_state_prefixes  # noqa: E402
from dinov3_m2f.weights.files import describe_key_mismatch  # noqa: E402
from helpers import load_init_checkpoint  # noqa: E402

from helpers import REPO  # noqa: E402
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
SUBPROCESS_TIMEOUT_S = 600
CLASS_EMBED = "sem_seg_head.predictor.class_embed"


def _model(*, seed, num_classes=None):
    cfg = LazyConfig.load(CONFIG)
    if num_classes is not None:
        cfg.model.num_classes = num_classes
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def _trainable_state(model):
    frozen = tuple(frozen_state_prefixes(model))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(frozen)}


def _write(path, state):
    torch.save({"model": state, "checkpoint_kind": "trainable"}, path)
    return str(path)


def _partial_load_warning(caplog, model, path):
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f.d2.checkpoint"):
        assert load_init_checkpoint(model, path, partial=True) == 0
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Partial load")]
    assert len(warnings) == 1
    return warnings[0]


@pytest.fixture(scope="module")
def source():
    """Trainable state of a 7-class model, seeded apart from the models it initialises."""
    return _trainable_state(_model(seed=1))


def test_a_corrupt_safetensors_init_checkpoint_names_the_file(tmp_path):
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="Could not read safetensors checkpoint .*broken.safetensors"):
        load_init_checkpoint(_model(seed=0), str(corrupt), partial=False)


def test_a_complete_checkpoint_loads_strictly(tmp_path, source):
    model = _model(seed=2)
    assert load_init_checkpoint(model, _write(tmp_path / "init.pth", source), partial=False) == 0
    for key, value in _trainable_state(model).items():
        assert torch.equal(value, source[key]), key


def test_other_num_classes_fails_unless_partial_then_skips_only_the_classifier(tmp_path, source, caplog):
    path = _write(tmp_path / "init.pth", source)
    model = _model(seed=2, num_classes=4)
    before = {k: v.clone() for k, v in _trainable_state(model).items()}
    shapes = [(f"{CLASS_EMBED}.{leaf}", tuple(source[f"{CLASS_EMBED}.{leaf}"].shape),
               tuple(before[f"{CLASS_EMBED}.{leaf}"].shape)) for leaf in ("bias", "weight")]
    expected = describe_key_mismatch(missing=[k for k, _, _ in shapes], unexpected=[], wrong_shapes=shapes)
    assert expected.startswith(f"wrong shape (file vs model): {CLASS_EMBED}.bias (8,) vs (5,)")
    with pytest.raises(RuntimeError, match=r"init\.pth does not match the model: wrong shape") as info:
        load_init_checkpoint(model, path, partial=False)
    assert expected in str(info.value) and "train.init_partial=True" in str(info.value)

    warning = _partial_load_warning(caplog, model, path)
    assert f"init.pth, skipped: {expected} (" in warning  # exactly the classifier, nothing else
    for key, value in _trainable_state(model).items():
        assert torch.equal(value, before[key] if key.startswith(CLASS_EMBED) else source[key]), key


def test_backbone_and_adapter_only_fails_unless_partial_then_the_head_keeps_its_init(tmp_path, source, caplog):
    adapter_only = {k: v for k, v in source.items() if k.startswith("backbone.")}
    path = _write(tmp_path / "adapter.pth", adapter_only)
    model = _model(seed=2)
    head_keys = sorted(k for k in source if k.startswith("sem_seg_head."))
    expected = describe_key_mismatch(missing=head_keys, unexpected=[], wrong_shapes=[])
    with pytest.raises(RuntimeError, match=r"adapter\.pth does not match the model: missing in the file: ") as info:
        load_init_checkpoint(model, path, partial=False)
    assert expected in str(info.value) and "sem_seg_head.predictor.query_feat.weight" in expected

    before = {k: v.clone() for k, v in _trainable_state(model).items()}
    warning = _partial_load_warning(caplog, model, path)
    assert f"adapter.pth, skipped: {expected} (" in warning
    for key, value in _trainable_state(model).items():
        assert torch.equal(value, source[key] if key.startswith("backbone.") else before[key]), key


def test_another_projects_head_lists_the_unexpected_keys(tmp_path, source, caplog):
    # e.g. a head converted from another Mask2Former code base under its own names
    renamed = {k.replace("sem_seg_head.predictor.", "decode_head.transformer_predictor."): v
               for k, v in source.items()}
    path = _write(tmp_path / "other_head.pth", renamed)
    model = _model(seed=2)
    unexpected = sorted(k for k in renamed if k.startswith("decode_head."))
    missing = sorted(k for k in source if k.startswith("sem_seg_head.predictor."))
    expected = describe_key_mismatch(missing=missing, unexpected=unexpected, wrong_shapes=[])
    with pytest.raises(RuntimeError, match=r"unexpected in the file: decode_head\.transformer_predictor\."):
        load_init_checkpoint(model, path, partial=False)
    warning = _partial_load_warning(caplog, model, path)
    assert f"other_head.pth, skipped: {expected} (" in warning
    loaded = [k for k in _trainable_state(model) if not k.startswith("sem_seg_head.predictor.")]
    assert loaded and all(torch.equal(model.state_dict()[k], source[k]) for k in loaded)


def test_train_net_stops_before_iteration_0_listing_the_unset_weights(synthetic_env, tmp_path, source):
    path = _write(tmp_path / "adapter.pth", {k: v for k, v in source.items() if k.startswith("backbone.")})
    command = [sys.executable, TRAIN_NET, "--config-file", CONFIG, f"train.output_dir={tmp_path / 'run'}",
               f"train.init_checkpoint={path}", "train.max_iter=1", "train.eval_period=0",
               "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
               "model.criterion.num_points=256"]
    proc = subprocess.run(command, env=synthetic_env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode != 0
    assert "adapter.pth does not match the model: missing in the file: sem_seg_head." in proc.stderr
    assert "Starting training from iteration" not in proc.stdout + proc.stderr

    proc = subprocess.run(command + ["train.init_partial=True"], env=synthetic_env, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Partial load of" in proc.stdout + proc.stderr

"""Fault matrix (docs/reliability.md), rows that need detectron2: unreadable images in training and
evaluation, atomic checkpoints, untrusted and foreign checkpoints, all-ignore crops, wrong roots."""
import glob
import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.evaluation import SemSegEvaluator, inference_on_dataset  # noqa: E402
from helpers import write_code_executing_checkpoint  # noqa: E402
from test_meta_arch import _image, _tiny_model  # noqa: E402
from test_train_net import SUBPROCESS_TIMEOUT_S, _command, _Tiny  # noqa: E402
from torch import nn  # noqa: E402

from dinov3_m2f.d2 import datasets as ds  # noqa: E402
from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.d2.evaluation import (  # noqa: E402
    SemSegGroundTruthLoader,
    SkippingSemSegEvaluator,
    build_sem_seg_test_loader,
)
from dinov3_m2f.d2.mapper import SemSegDatasetMapper  # noqa: E402
from dinov3_m2f.data.bad_samples import TooManyBadSamplesError  # noqa: E402
from dinov3_m2f.data.image import UnreadableImageError  # noqa: E402

NUM_CLASSES = 3
SIZE = (12, 16)  # H, W
CLASS_NAMES = ["a", "b", "c"]


def _write_pair(root, stem, label):
    """An image whose intensity encodes ``label`` and a mask of ``label`` with an ignored row."""
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    image_path, mask_path = str(root / "images" / f"{stem}.png"), str(root / "masks" / f"{stem}.png")
    mask = np.full(SIZE, label, np.uint8)
    mask[0] = 255
    assert cv2.imwrite(image_path, np.full((*SIZE, 3), label * 50, np.uint8))
    assert cv2.imwrite(mask_path, mask)
    return {"file_name": image_path, "sem_seg_file_name": mask_path}


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _test_mapper():
    return SemSegDatasetMapper(is_train=False, augmentations=[])


# ---------------------------------------------------------------- unreadable image or mask


def test_training_mapper_names_an_unreadable_image(tmp_path):
    record = _write_pair(tmp_path, "x", 1)
    # no bad sample allowed: the first sample that fails twice stops training, naming the file
    mapper = SemSegDatasetMapper(is_train=True, augmentations=[], num_classes=NUM_CLASSES)
    mapper.skip_bad_samples.retry_delay_s = 0
    _truncate(record["file_name"])
    with pytest.raises(TooManyBadSamplesError, match=f"cannot read image file {record['file_name']}"):
        mapper(record)
    missing = str(tmp_path / "missing.png")
    mapper.skip_bad_samples.skipped.clear()
    with pytest.raises(TooManyBadSamplesError, match=f"image file {missing} does not exist"):
        mapper({**record, "file_name": missing})
    # the test mapper raises at once; only the test loader turns it into a skip
    with open(record["file_name"], "wb") as f:
        f.write(b"not an image")
    with pytest.raises(UnreadableImageError, match=f"cannot read image file {record['file_name']}"):
        _test_mapper()(record)


def test_training_run_stops_before_iteration_0_listing_every_bad_file(synthetic_env, tmp_path):
    # The images are broken in a private copy: the session's synthetic dataset stays intact.
    shared = os.path.join(synthetic_env["DETECTRON2_DATASETS"], "dinov3_m2f_synthetic")
    root = str(tmp_path / "datasets" / "dinov3_m2f_synthetic")
    shutil.copytree(shared, root)
    env = {**synthetic_env, "DETECTRON2_DATASETS": str(tmp_path / "datasets")}
    train_images = sorted(glob.glob(os.path.join(root, "train", "images", "*.png")))
    broken = train_images[::5]
    for path in broken:  # the header scan finds files that are not images
        with open(path, "wb") as f:
            f.write(b"not an image")
    proc = subprocess.run(
        _command(str(tmp_path / "run"), "train.max_iter=2", "train.eval_period=0"),
        env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert proc.returncode != 0
    error = proc.stderr[proc.stderr.index("dinov3_m2f.data.scan.DatasetScanError"):]
    assert all(path in error for path in broken)
    assert not any(path in error for path in train_images if path not in broken)
    assert "Starting training from iteration" not in proc.stdout + proc.stderr


def test_eval_loader_skips_unreadable_images_with_a_warning(tmp_path, caplog):
    records = [_write_pair(tmp_path, f"im{i}", i) for i in range(3)]
    _truncate(records[1]["file_name"])
    loader = build_sem_seg_test_loader(records, mapper=_test_mapper())
    with caplog.at_level("WARNING", logger="dinov3_m2f.d2.evaluation"):
        batches = list(loader)
    assert [[x["file_name"] for x in batch] for batch in batches] == [
        [records[0]["file_name"]], [], [records[2]["file_name"]]
    ]
    assert all("image" in x for batch in batches for x in batch)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"cannot read image file {records[1]['file_name']}" in warnings[0]

    pairs = build_sem_seg_test_loader(records, mapper=_test_mapper(), batch_size=2)
    assert [len(batch) for batch in pairs] == [1, 1]


class _IntensityModel(nn.Module):
    """Predicts class ``round(pixel / 50)`` everywhere (matches the images of ``_write_pair``)."""

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            labels = (x["image"][0].float() / 50).round().long().clamp(0, NUM_CLASSES - 1)  # [H, W]
            scores = nn.functional.one_hot(labels, NUM_CLASSES).permute(2, 0, 1).float()  # [C, H, W]
            outputs.append({"sem_seg": scores})
        return outputs


def test_evaluation_skips_unreadable_files_and_finishes_the_rest(tmp_path, catalog, caplog):
    records = [_write_pair(tmp_path, f"im{i}", i % NUM_CLASSES) for i in range(4)]
    name = ds.register_folder_dataset(
        "t_rel_eval", image_dir=str(tmp_path / "images"), mask_dir=str(tmp_path / "masks"),
        class_names=CLASS_NAMES,
    )
    # a mask that is correct but disagrees with the predictions, so a skipped image would show
    cv2.imwrite(records[3]["sem_seg_file_name"], np.full(SIZE, 2, np.uint8))
    expected = SemSegEvaluator(name, sem_seg_loading_fn=SemSegGroundTruthLoader(name))
    expected.reset()
    good = [records[0], records[3]]
    inputs = [_test_mapper()(r) for r in good]
    expected.process(inputs, _IntensityModel()(inputs))
    expected_results = expected.evaluate()

    _truncate(records[1]["file_name"])  # unreadable image
    with open(records[2]["sem_seg_file_name"], "wb") as f:  # unreadable ground truth
        f.write(b"garbage")
    evaluator = SkippingSemSegEvaluator(name)
    loader = build_sem_seg_test_loader(DatasetCatalog.get(name), mapper=_test_mapper())
    with caplog.at_level("WARNING", logger="dinov3_m2f.d2.evaluation"):
        results = inference_on_dataset(_IntensityModel(), loader, evaluator)
    assert results.keys() == expected_results.keys() == {"sem_seg"}
    assert dict(results["sem_seg"]) == pytest.approx(dict(expected_results["sem_seg"]), nan_ok=True)
    assert results["sem_seg"]["mIoU"] < 100  # the disagreeing image was evaluated
    assert evaluator.skipped == [records[2]["file_name"]]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert records[1]["file_name"] in messages and records[2]["sem_seg_file_name"] in messages


def test_evaluation_still_raises_for_wrong_masks(tmp_path, catalog):
    records = [_write_pair(tmp_path, f"im{i}", i) for i in range(2)]
    name = ds.register_folder_dataset(
        "t_rel_wrong", image_dir=str(tmp_path / "images"), mask_dir=str(tmp_path / "masks"),
        class_names=CLASS_NAMES,
    )
    evaluator = SkippingSemSegEvaluator(name)
    evaluator.reset()
    inputs = [_test_mapper()(records[0])]
    outputs = _IntensityModel()(inputs)
    mask_path = records[0]["sem_seg_file_name"]
    cv2.imwrite(mask_path, np.zeros((*SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match=f"{mask_path} has 3 channels.*single-channel label PNG"):
        evaluator.process(inputs, outputs)
    cv2.imwrite(mask_path, np.full(SIZE, 9, np.uint8))
    with pytest.raises(ValueError, match=rf"{mask_path} contains label values \[9\]"):
        evaluator.process(inputs, outputs)
    assert evaluator.skipped == []


# ---------------------------------------------------------------- checkpoints


class _SimulatedCrash(RuntimeError):
    pass


def test_crash_while_saving_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    model = _Tiny()
    checkpointer = TrainableCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    saved = (tmp_path / "model_0000001.pth").read_bytes()

    def save_half_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half")
        raise _SimulatedCrash("killed during torch.save")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(_SimulatedCrash):
        checkpointer.save("model_0000002", iteration=2)
    with pytest.raises(_SimulatedCrash):
        checkpointer.save("model_0000001", iteration=99)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == saved
    resumed = TrainableCheckpointer(_Tiny(), str(tmp_path), strict=True)
    assert resumed.resume_or_load("", resume=True)["iteration"] == 1


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    evil_pth = write_code_executing_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(ValueError, match=f"{evil_pth}.*Weights only load failed"):
        TrainableCheckpointer(_Tiny()).load(evil_pth)
    evil_pkl = write_code_executing_checkpoint(tmp_path / "evil.pkl", marker, plain_pickle=True)
    with pytest.raises(ValueError, match=f"Refusing to load pickle checkpoint {evil_pkl}"):
        TrainableCheckpointer(_Tiny()).load(evil_pkl)
    assert not marker.exists()


def test_checkpointer_names_an_unreadable_checkpoint_file(tmp_path):
    good = tmp_path / "good.pth"
    TrainableCheckpointer(_Tiny(), str(tmp_path)).save("good")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth"):
        TrainableCheckpointer(_Tiny()).load(str(truncated))
    evil = write_code_executing_checkpoint(tmp_path / "evil.pth", tmp_path / "code_ran")
    with pytest.raises(ValueError, match=r"evil\.pth.*weights_only=True"):
        TrainableCheckpointer(_Tiny()).load(evil)


def test_checkpoint_of_another_model_lists_missing_and_unexpected_keys(tmp_path):
    other = nn.Sequential(nn.Linear(2, 2))
    TrainableCheckpointer(other, str(tmp_path), full=True).save("other")
    with pytest.raises(RuntimeError, match=r"other\.pth.*missing in the file: backbone\.\{bias, periods, weight\}, "
                       r"head\.\{bias, weight\}, norm\.\{bias, weight\}, query_feat; "
                       r"unexpected in the file: 0\.\{bias, weight\}"):
        TrainableCheckpointer(_Tiny(), strict=True).load(str(tmp_path / "other.pth"))


# ---------------------------------------------------------------- data and training


def test_all_ignore_crop_trains_with_finite_loss():
    model = _tiny_model().train()
    batch = [
        {"image": _image(64, 64), "sem_seg": torch.full((64, 64), 255, dtype=torch.int64)},
        {"image": _image(64, 64), "sem_seg": torch.full((64, 64), 255, dtype=torch.int64)},
    ]
    losses = model(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_standard_dataset_under_a_wrong_root_names_path_and_layout(tmp_path, registered_under):
    registered_under(ds.register_all_loveda, "loveda_sem_seg", ("train", "val", "test"),
                     tmp_path / "nowhere")
    root = tmp_path / "nowhere" / "LoveDA"
    with pytest.raises(FileNotFoundError, match=f"{root}/Train/Urban/images_png.*expected layout"):
        DatasetCatalog.get("loveda_sem_seg_train")
    (root / "Train" / "Urban" / "images_png").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"no images found in {root}/Train/Urban/images_png"):
        DatasetCatalog.get("loveda_sem_seg_train")

"""An evaluation with nothing to measure (every mask all ignore, every image or mask unreadable)
is one clear error, never NaN metrics; ``eval_results.json`` is strict JSON; the best checkpoint
never takes a NaN."""
import json
import logging
import math

import cv2
import numpy as np
import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from test_reliability_d2 import (  # noqa: E402
    CLASS_NAMES, SIZE, _IntensityModel, _test_mapper, _truncate, _write_pair,
)
from test_training_modes import _batches, _Net  # noqa: E402

from dinov3_m2f.d2 import datasets as ds  # noqa: E402
from dinov3_m2f.d2.checkpoint import TrainableCheckpointer  # noqa: E402
from dinov3_m2f.d2.evaluation import (  # noqa: E402
    NothingToEvaluateError, SkippingSemSegEvaluator, build_sem_seg_test_loader, results_to_json,
)
from dinov3_m2f.d2.hooks import BestCheckpointer, SegEvalHook  # noqa: E402
from dinov3_m2f.d2.solver import get_param_groups  # noqa: E402
from dinov3_m2f.d2.trainer import SegTrainer  # noqa: E402

IMAGES = 3


def _evaluate(tmp_path, name, break_files):
    records = [_write_pair(tmp_path, f"im{i}", i) for i in range(IMAGES)]
    break_files(records)
    dataset = ds.register_folder_dataset(
        name, image_dir=str(tmp_path / "images"), mask_dir=str(tmp_path / "masks"),
        class_names=CLASS_NAMES,
    )
    loader = build_sem_seg_test_loader(DatasetCatalog.get(dataset), mapper=_test_mapper())
    return inference_on_dataset(_IntensityModel(), loader, SkippingSemSegEvaluator(dataset))


def _all_ignore(records):
    for record in records:
        assert cv2.imwrite(record["sem_seg_file_name"], np.full(SIZE, 255, np.uint8))


def _images_unreadable(records):
    for record in records:
        _truncate(record["file_name"])


def _masks_unreadable(records):
    for record in records:
        with open(record["sem_seg_file_name"], "wb") as f:
            f.write(b"garbage")


@pytest.mark.parametrize("break_files, evaluated, skipped", [
    (_all_ignore, IMAGES, 0), (_images_unreadable, 0, 0), (_masks_unreadable, 0, IMAGES),
])
def test_nothing_to_evaluate_is_one_error_naming_the_dataset(tmp_path, catalog, break_files,
                                                            evaluated, skipped):
    with pytest.raises(NothingToEvaluateError,
                       match=rf"evaluation of t_nothing: no labelled ground-truth pixel in the "
                             rf"{evaluated} images evaluated \({skipped} more skipped"):
        _evaluate(tmp_path, "t_nothing", break_files)


def test_one_labelled_image_is_enough(tmp_path, catalog):
    results = _evaluate(tmp_path, "t_one", lambda records: _all_ignore(records[1:]))
    assert math.isfinite(results["sem_seg"]["mIoU"])


def _reject_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def test_results_are_written_as_strict_json():
    results = {"sem_seg": {"mIoU": 50.0, "IoU-water": float("nan"), "ACC-road": float("inf")}}
    text = results_to_json(results)
    assert json.loads(text, parse_constant=_reject_constant) == {
        "sem_seg": {"mIoU": 50.0, "IoU-water": None, "ACC-road": None}
    }


def test_the_best_checkpoint_never_takes_a_nan(tmp_path, caplog):
    model = _Net()
    trainer = SegTrainer(model, iter(_batches(5, 4)),
                         torch.optim.SGD(get_param_groups(model, base_lr=0.1, weight_decay=0.0)),
                         device=torch.device("cpu"))
    checkpointer = TrainableCheckpointer(model, str(tmp_path), trainer=trainer)
    evaluations = iter([float("nan"), 2.0, float("nan"), float("inf")])
    best = BestCheckpointer(1, checkpointer, "sem_seg/mIoU")
    trainer.register_hooks([SegEvalHook(1, lambda: {"sem_seg": {"mIoU": next(evaluations)}}), best])
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        trainer.train(0, 4)
    assert (best.best_metric, best.best_iter) == (2.0, 1)
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 1
    assert "sem_seg/mIoU=nan at iteration 0 is NaN or infinite; it is never the best" in caplog.text
    assert "sem_seg/mIoU=inf at iteration 4 is NaN or infinite" in caplog.text

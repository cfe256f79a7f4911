"""tools/prepare_ade20k.py and tools/prepare_cityscapes.py on tiny fake trees."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import load_tool

prepare_ade20k = load_tool("prepare_ade20k")


@pytest.fixture(scope="module")
def prepare_cityscapes():
    """tools/prepare_cityscapes.py (it takes the train ids from detectron2)."""
    pytest.importorskip("detectron2")
    return load_tool("prepare_cityscapes")


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_ade20k_shifts_labels_and_is_idempotent(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 2], [150, 75, 0]])
    _png(root / "annotations" / "training" / "ADE_train_1.png", raw)
    _png(root / "annotations" / "validation" / "ADE_val_1.png", raw[::-1])
    assert prepare_ade20k.main(["--root", str(root)]) == 0
    out = root / "annotations_detectron2" / "training" / "ADE_train_1.png"
    np.testing.assert_array_equal(_read(out), [[255, 0, 1], [149, 74, 255]])
    np.testing.assert_array_equal(_read(root / "annotations_detectron2" / "validation" / "ADE_val_1.png"),
                                  [[149, 74, 255], [255, 0, 1]])
    _png(out, np.zeros((2, 3)))  # a second run keeps existing outputs ...
    assert prepare_ade20k.prepare(str(root)) == 0
    assert _read(out).max() == 0
    assert prepare_ade20k.prepare(str(root), overwrite=True) == 2  # ... unless --overwrite
    assert _read(out)[0, 0] == 255
    assert not list(root.rglob(".tmp_*"))


def test_ade20k_errors(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    with pytest.raises(FileNotFoundError, match="annotations/training"):
        prepare_ade20k.prepare(str(root))
    _png(root / "annotations" / "training" / "bad.png", np.array([[151]]))
    _png(root / "annotations" / "validation" / "ok.png", np.array([[1]]))
    with pytest.raises(ValueError, match="bad.png contains values \\[151\\]"):
        prepare_ade20k.prepare(str(root))


def test_cityscapes_label_ids_to_train_ids(tmp_path, prepare_cityscapes):
    root = tmp_path / "cityscapes"
    ids = np.arange(34).reshape(2, 17)
    src = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    _png(src, ids)
    _png(root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", ids)
    _png(root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_color.png", np.zeros((2, 17)))
    assert prepare_cityscapes.main(["--root", str(root)]) == 0
    out = _read(src.with_name("aachen_000000_000019_gtFine_labelTrainIds.png"))
    expected = np.full(34, 255)
    evaluated_ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    expected[evaluated_ids] = np.arange(19)
    np.testing.assert_array_equal(out.reshape(-1), expected)
    assert len(list(root.rglob("*_labelTrainIds.png"))) == 2
    assert prepare_cityscapes.prepare(str(root)) == 0  # idempotent
    assert prepare_cityscapes.prepare(str(root), splits=["train"], overwrite=True) == 1


def test_cityscapes_unknown_id_names_the_file(tmp_path, prepare_cityscapes):
    root = tmp_path / "cityscapes"
    _png(root / "gtFine" / "train" / "x" / "x_1_gtFine_labelIds.png", np.array([[34]]))
    with pytest.raises(ValueError, match="x_1_gtFine_labelIds.png contains values \\[34\\]"):
        prepare_cityscapes.prepare(str(root), splits=["train"])
    with pytest.raises(FileNotFoundError, match="gtFine/val"):
        prepare_cityscapes.prepare(str(root), splits=["val"])

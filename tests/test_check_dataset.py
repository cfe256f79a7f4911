"""tools/check_dataset.py and data/checks.py on tiny datasets with one fault each."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov3_m2f.data.checks import check_dataset, pair_files
from helpers import load_tool

NUM_CLASSES = 3
SIZE = (8, 10)  # H, W


tool = load_tool("check_dataset")


def _make_dataset(root: Path, num: int = 3):
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(num):
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(images / f"im{i}.png")
        labels = np.full(SIZE, i % NUM_CLASSES, dtype=np.uint8)
        labels[0, :] = 255
        Image.fromarray(labels).save(masks / f"im{i}.png")
    return images, masks


def _run(images, masks, capsys):
    code = tool.main(["--image-dir", str(images), "--mask-dir", str(masks), "--num-classes", str(NUM_CLASSES),
                      "--class-names", "a,b,c"])
    return code, capsys.readouterr().out


def test_clean_dataset_exits_zero_with_histogram(tmp_path, capsys):
    images, masks = _make_dataset(tmp_path)
    code, out = _run(images, masks, capsys)
    assert code == 0
    assert "0 problems" in out
    labelled_per_mask = (SIZE[0] - 1) * SIZE[1]
    for class_id, name in enumerate("abc"):
        row = next(line for line in out.splitlines() if line.split()[:2] == [str(class_id), name])
        assert int(row.split()[2]) == labelled_per_mask
    ignore_row = next(line for line in out.splitlines() if "(ignore)" in line)
    assert int(ignore_row.split()[-1]) == 3 * SIZE[1]


def _break_bad_value(images, masks):
    labels = np.zeros(SIZE, dtype=np.uint8)
    labels[2, 2] = 7
    Image.fromarray(labels).save(masks / "im1.png")
    return masks / "im1.png", "label values [7]"


def _break_rgb_mask(images, masks):
    Image.fromarray(np.zeros((*SIZE, 3), dtype=np.uint8)).save(masks / "im0.png")
    return masks / "im0.png", "3 channels"


def _break_size(images, masks):
    Image.fromarray(np.zeros((SIZE[0] + 1, SIZE[1]), dtype=np.uint8)).save(masks / "im2.png")
    return masks / "im2.png", "must have the same size"


def _break_unreadable_image(images, masks):
    (images / "im1.png").write_bytes(b"\x89PNG truncated")
    return images / "im1.png", "cannot read image file"


def _break_unreadable_mask(images, masks):
    (masks / "im2.png").write_bytes(b"garbage")
    return masks / "im2.png", "cannot read mask file"


def _break_missing_mask(images, masks):
    (masks / "im0.png").unlink()
    return images / "im0.png", "has no mask"


@pytest.mark.parametrize(
    "breaker",
    [_break_bad_value, _break_rgb_mask, _break_size, _break_unreadable_image, _break_unreadable_mask,
     _break_missing_mask],
)
def test_each_fault_fails_and_names_the_file(tmp_path, capsys, breaker):
    images, masks = _make_dataset(tmp_path)
    path, message = breaker(images, masks)
    code, out = _run(images, masks, capsys)
    assert code == 1
    assert "1 problems" in out
    problem_lines = out.split("Problems:")[1]
    assert str(path) in problem_lines and message in problem_lines


def test_label_map_is_applied_before_the_range_check(tmp_path):
    images, masks = _make_dataset(tmp_path, num=1)
    Image.fromarray(np.array([[0, 1], [2, 3]] * 4, dtype=np.uint8).repeat(5, axis=1)).save(masks / "im0.png")
    pairs, problems = pair_files(str(images), str(masks))
    assert not problems
    raw_map = {0: 255, 1: 0, 2: 1, 3: 2}  # LoveDA-like: 0 = no-data
    report = check_dataset(pairs, num_classes=NUM_CLASSES, label_map=raw_map)
    assert report.ok
    assert report.pixels.tolist() == [20, 20, 20] and report.ignore_pixels == 20
    unmapped = check_dataset(pairs, num_classes=NUM_CLASSES, label_map={0: 255, 1: 0, 2: 1})
    assert not unmapped.ok and "label_map does not cover" in unmapped.problems[0].message


def test_registered_dataset_mode(tmp_path, capsys):
    pytest.importorskip("detectron2")
    from dinov3_m2f.d2.datasets import register_folder_dataset

    images, masks = _make_dataset(tmp_path)
    _break_bad_value(images, masks)
    name = register_folder_dataset(
        "check_dataset_test_folder", image_dir=str(images), mask_dir=str(masks), class_names=["x", "y", "z"]
    )
    assert tool.main(["--dataset", name]) == 1
    out = capsys.readouterr().out
    assert str(masks / "im1.png") in out and " x " in out


def test_arguments_are_validated(capsys):
    with pytest.raises(SystemExit):
        tool.main(["--image-dir", "a"])
    with pytest.raises(SystemExit):
        tool.main(["--dataset", "x", "--num-classes", "3"])

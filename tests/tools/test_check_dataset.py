"""tools/check_dataset.py and data/checks.py on tiny datasets with one fault each, EXIF-rotated
and 16-bit images, and the --visualize overlays."""
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from dinov3_m2f.data.checks import check_dataset, pair_files
from dinov3_m2f.data.image import read_image
from dinov3_m2f.data.visualize import class_colors
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


def _run(images, masks, capsys, *extra):
    code = tool.main(["--image-dir", str(images), "--mask-dir", str(masks), "--num-classes", str(NUM_CLASSES),
                      "--class-names", "a,b,c", *extra])
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



def test_summary_and_log_give_the_same_problem_count(tmp_path, capsys, caplog):
    images, masks = _make_dataset(tmp_path)
    _break_missing_mask(images, masks)  # found while pairing files
    _break_bad_value(images, masks)  # found while reading
    with caplog.at_level(logging.INFO):
        code, out = _run(images, masks, capsys)
    assert code == 1
    counts = {int(n) for n in re.findall(r"(\d+) problems", out + caplog.text)}
    assert counts == {2}
    assert len(out.split("Problems:")[1].strip().splitlines()) == 2


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_a_missing_directory_is_a_one_line_error(tmp_path, capsys, missing):
    images, masks = _make_dataset(tmp_path)
    gone = images if missing == "images" else masks
    shutil.rmtree(gone)
    code = tool.main(["--image-dir", str(images), "--mask-dir", str(masks), "--num-classes", "3"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines() == [f"check_dataset: error: {missing[:-1]} directory {gone} does not exist"]
    assert "Traceback" not in captured.out + captured.err


def test_an_unknown_dataset_name_is_a_one_line_error(capsys):
    pytest.importorskip("detectron2")
    assert tool.main(["--dataset", "no_such_dataset_train"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "check_dataset: error: dataset 'no_such_dataset_train' is not registered"
    ]


def _exif(orientation):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif


def _rotated_dataset(root):
    """im0: orientation 6, mask of the stored size; im1: orientation 8, mask of the displayed size;
    im2: orientation 3 (sizes cannot tell); im3: no orientation. Label 1 marks the white block."""
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    stored = np.zeros((*SIZE, 3), dtype=np.uint8)
    stored[:4, :5] = 255
    stored_mask = (stored[..., 0] > 0).astype(np.uint8)
    for name, orientation in [("im0", 6), ("im1", 8), ("im2", 3), ("im3", 1)]:
        Image.fromarray(stored).save(images / f"{name}.png", exif=_exif(orientation))
        mask = Image.fromarray(stored_mask)
        if name == "im1":  # drawn on the image as a viewer shows it
            mask.save(root / "tagged.png", exif=_exif(orientation))
            mask = ImageOps.exif_transpose(Image.open(root / "tagged.png"))
        mask.save(masks / f"{name}.png")
    return images, masks


def test_exif_rotated_images_are_reported_with_the_size_their_mask_matches(tmp_path, capsys):
    images, masks = _rotated_dataset(tmp_path)
    code, out = _run(images, masks, capsys)
    assert code == 0, out
    assert "0 problems, 3 images with an EXIF orientation" in out
    notes = out.split("Notes")[1].splitlines()
    note = {name: next(line for line in notes if f"{name}.png has EXIF" in line) for name in ("im0", "im1", "im2")}
    assert "orientation 6" in note["im0"] and "has the stored size and is turned with the image" in note["im0"]
    assert "orientation 8" in note["im1"] and "has the displayed size and is used as it is" in note["im1"]
    assert "orientation 3" in note["im2"] and "fits both sizes" in note["im2"]
    assert "im3.png has EXIF" not in out


def test_16_bit_images_are_read_as_training_reads_them(tmp_path, capsys):
    images, masks = _make_dataset(tmp_path, num=1)
    ramp = np.tile((np.arange(SIZE[1]) * 6000).astype(np.uint16), (SIZE[0], 1))
    Image.fromarray(ramp).save(images / "im0.png")
    code, out = _run(images, masks, capsys, "--visualize", "1", "--visualize-dir", str(tmp_path / "vis"))
    assert code == 0 and "im0.png is 16-bit grayscale" in out
    overlay = np.asarray(Image.open(next((tmp_path / "vis").iterdir())))
    # the ignored first row shows the image itself: the ramp scaled to 8 bits, not clipped to white
    np.testing.assert_array_equal(overlay[0, : SIZE[1], 0], ramp[0] >> 8)


def test_visualize_writes_aligned_overlays_rotated_images_first(tmp_path, capsys):
    images, masks = _rotated_dataset(tmp_path)
    folder = tmp_path / "vis"
    code, out = _run(images, masks, capsys, "--visualize", "3", "--visualize-dir", str(folder))
    assert code == 0 and f"Wrote 3 overlays to {folder}" in out
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["0000_im0.png", "0001_im1.png", "0002_im2.png"]
    colors = np.asarray(class_colors(NUM_CLASSES))
    for name in written[:2]:  # masks that line up: class 1's colour exactly over the white block
        overlay = np.asarray(Image.open(folder / name)).astype(int)
        height, width = SIZE[1], SIZE[0]  # displayed: turned by 90 degrees
        assert overlay.shape[1] > width  # legend on the right
        region = overlay[:height, :width]
        blended_white = np.rint(0.5 * 255 + 0.5 * colors[1]).astype(int)
        is_white_class = (np.abs(region - blended_white).max(axis=-1) == 0) | (region == colors[1]).all(axis=-1)
        white = read_image(str(images / name[5:]))[..., 0] > 128
        np.testing.assert_array_equal(is_white_class, white)

"""Synthetic dataset generator: determinism, content, caching (numpy/cv2 only)."""
import os

import cv2
import numpy as np
import pytest

from dinov3_m2f.data.synthetic import (
    IGNORE_VALUE,
    MANIFEST_NAME,
    SPLITS,
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    default_synthetic_root,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    is_complete_synthetic_dataset,
)

SMALL = dict(num_train=4, num_val=2, image_size=64)


def _all_files(root):
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _masks(root, split):
    mask_dir = os.path.join(root, split, "masks")
    return [cv2.imread(os.path.join(mask_dir, f), cv2.IMREAD_UNCHANGED) for f in sorted(os.listdir(mask_dir))]


def test_layout_and_determinism(tmp_path):
    a = generate_synthetic_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    b = generate_synthetic_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    c = generate_synthetic_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    files_a, files_b, files_c = _all_files(a), _all_files(b), _all_files(c)
    expected = {MANIFEST_NAME}
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            expected |= {f"{split}/images/{split}_{i:04d}.png", f"{split}/masks/{split}_{i:04d}.png"}
    assert set(files_a) == expected
    assert files_a == files_b
    images = [k for k in files_a if "/images/" in k]
    assert all(files_a[k] != files_c[k] for k in images)
    # train and val are different samples
    assert files_a["train/images/train_0000.png"] != files_a["val/images/val_0000.png"]


def test_content_classes_and_ignore(tmp_path):
    root = generate_synthetic_dataset(str(tmp_path / "d"), seed=0, num_train=8, num_val=4, image_size=96)
    assert len(SYNTHETIC_CLASSES) == len(SYNTHETIC_COLORS) == 7
    for split in SPLITS:
        masks = _masks(root, split)
        present = set()
        for mask in masks:
            assert mask.dtype == np.uint8 and mask.shape == (96, 96)
            values = set(np.unique(mask).tolist())
            assert values <= set(range(7)) | {IGNORE_VALUE}
            assert IGNORE_VALUE in values  # every image has a no-data patch
            assert (mask == IGNORE_VALUE).mean() < 0.05
            present |= values
        assert present >= set(range(7)), f"{split} misses classes {set(range(7)) - present}"
    image = cv2.imread(os.path.join(root, "train", "images", "train_0000.png"), cv2.IMREAD_UNCHANGED)
    mask = _masks(root, "train")[0]
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert (image[mask == IGNORE_VALUE] == 0).all()  # no-data pixels are black
    # classes have distinct mean colours (what makes the task learnable)
    means = [image[mask == c].mean(axis=0) for c in range(7) if (mask == c).sum() > 20]
    dists = [np.abs(m1 - m2).max() for i, m1 in enumerate(means) for m2 in means[i + 1:]]
    assert min(dists) > 15


def test_ensure_reuses_complete_and_regenerates_partial(tmp_path):
    root = str(tmp_path / "cache")
    assert ensure_synthetic_dataset(root, **SMALL) == root
    assert is_complete_synthetic_dataset(root, **SMALL)
    mask = os.path.join(root, "train", "masks", "train_0001.png")
    marker = os.path.join(root, "train", "marker.txt")
    open(marker, "w").close()
    ensure_synthetic_dataset(root, **SMALL)
    assert os.path.exists(marker), "a complete dataset must be reused, not rewritten"

    os.remove(mask)
    assert not is_complete_synthetic_dataset(root, **SMALL)
    ensure_synthetic_dataset(root, **SMALL)
    assert os.path.isfile(mask) and not os.path.exists(marker)
    assert is_complete_synthetic_dataset(root, **SMALL)

    ensure_synthetic_dataset(root, seed=1, **SMALL)  # other parameters -> regenerated
    assert is_complete_synthetic_dataset(root, seed=1, **SMALL)
    assert not is_complete_synthetic_dataset(root, seed=0, **SMALL)
    # no temporary directories are left next to the dataset
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_missing_manifest_counts_as_partial(tmp_path):
    root = generate_synthetic_dataset(str(tmp_path / "p"), **SMALL)
    os.remove(os.path.join(root, MANIFEST_NAME))
    assert not is_complete_synthetic_dataset(root, **SMALL)


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "important.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="refusing to overwrite"):
        ensure_synthetic_dataset(str(root), **SMALL)
    assert (root / "important.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["mine"]


@pytest.mark.parametrize(
    "kwargs", [dict(num_train=0), dict(num_val=-1), dict(image_size=8), dict(seed=-1), dict(seed=1.5)]
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_synthetic_dataset(str(tmp_path / "x"), **{**SMALL, **kwargs})


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert default_synthetic_root() == str(tmp_path / "dinov3_m2f_synthetic")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert default_synthetic_root() == os.path.join("datasets", "dinov3_m2f_synthetic")

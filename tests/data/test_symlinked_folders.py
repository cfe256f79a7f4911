"""Folder datasets whose ``images/`` and ``masks/`` hold symbolic links to folders on another
file system: training, evaluation and ``tools/check_dataset.py`` read the same files, through
the links, with loops skipped."""
import logging
import os

import numpy as np
from PIL import Image

from dinov3_m2f.data.checks import pair_files
from dinov3_m2f.data.files import list_files, load_split_dicts
from helpers import load_tool

NUM_CLASSES = 3
SIZE = (8, 10)  # H, W
# Samples per folder: one in images/ itself, two in each linked folder.
LINKED_FOLDERS = ("a", "b")
PER_FOLDER = 2


def _write_pair(images, masks, name, value):
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*SIZE, 3), value, dtype=np.uint8)).save(images / f"{name}.png")
    Image.fromarray(np.full(SIZE, value % NUM_CLASSES, dtype=np.uint8)).save(masks / f"{name}.png")


def _linked_dataset(tmp_path):
    """images/ and masks/ with one own sample and links a -> scratch/.., b -> scratch/..; a link
    loop images/a/up -> images (and masks/a/up -> masks)."""
    images, masks, scratch = tmp_path / "images", tmp_path / "masks", tmp_path / "scratch"
    _write_pair(images, masks, "own", 0)
    for folder in LINKED_FOLDERS:
        for i in range(PER_FOLDER):
            _write_pair(scratch / "images" / folder, scratch / "masks" / folder, f"{folder}{i}", i)
        os.symlink(scratch / "images" / folder, images / folder)
        os.symlink(scratch / "masks" / folder, masks / folder)
    os.symlink(images, scratch / "images" / "a" / "up")
    os.symlink(masks, scratch / "masks" / "a" / "up")
    return images, masks


EXPECTED_KEYS = ["a/a0", "a/a1", "b/b0", "b/b1", "own"]


def test_linked_folders_are_listed_and_loops_skipped_with_a_warning(tmp_path, caplog):
    images, _ = _linked_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f"):
        found, duplicates = list_files(str(images), (".png",))
    assert sorted(found) == EXPECTED_KEYS
    assert not duplicates
    assert f"Skipping {images / 'a' / 'up'}: it leads to {images}" in caplog.text


def test_training_and_check_dataset_read_the_same_linked_samples(tmp_path, capsys):
    images, masks = _linked_dataset(tmp_path)
    registered = load_split_dicts([(str(images), str(masks))], layout="images/ + masks/")
    checked, problems = pair_files(str(images), str(masks))
    assert not problems
    assert checked == registered
    assert len(registered) == len(EXPECTED_KEYS)

    code = load_tool("check_dataset").main(["--image-dir", str(images), "--mask-dir", str(masks),
                                            "--num-classes", str(NUM_CLASSES)])
    assert code == 0
    assert f"{len(EXPECTED_KEYS)} images, {len(EXPECTED_KEYS)} masks, 0 problems" in capsys.readouterr().out

"""A small LoveDA-like synthetic semantic segmentation dataset on disk (numpy + cv2 only).

The scenes are drawn by :func:`~.synthetic_scenes.render_synthetic_sample`; this module writes
them, with a manifest, and finds a complete cached copy.

Each image is an aerial-looking scene with the seven LoveDA classes, each with its own mean colour
and texture so a small model learns the task in minutes on a CPU:

======  ============  ==============================================
id      class         appearance
======  ============  ==============================================
0       background    light grey-beige, mild noise
1       building      red-brown filled rectangles
2       road          dark grey thick straight lines
3       water         smooth blue elliptical blobs
4       barren        sandy ellipses with strong speckle
5       forest        dark green blobs with a low-frequency blotch texture
6       agriculture   rotated rectangular fields with light/dark stripes
======  ============  ==============================================

Every image also has a small black no-data patch in one corner whose mask value is
``IGNORE_VALUE`` (255), like LoveDA's no-data pixels after the label shift.

Layout written by :func:`generate_synthetic_dataset`::

    root/manifest.json                      generation parameters and file list (written last)
    root/{train,val}/images/<stem>.png      RGB uint8
    root/{train,val}/masks/<stem>.png       single-channel uint8 class ids, 255 = ignore

The dataset is built in a temporary sibling directory and renamed into place, so an interrupted or
concurrent run never leaves a half-written ``root`` behind.
"""
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, List, Optional

import cv2
import numpy as np

from .files import datasets_root
from .loveda import LOVEDA_CLASSES, LOVEDA_COLORS
from .masks import IGNORE_VALUE
from .synthetic_scenes import render_synthetic_sample

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_DIR_NAME",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "IGNORE_VALUE",
    "MANIFEST_NAME",
    "SPLITS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COLORS",
    "default_synthetic_root",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
    "is_complete_synthetic_dataset",
    "render_synthetic_sample",
]

# The synthetic scenes mimic LoveDA: its classes and palette.
SYNTHETIC_CLASSES = LOVEDA_CLASSES
SYNTHETIC_COLORS = LOVEDA_COLORS
SPLITS = ("train", "val")
MANIFEST_NAME = "manifest.json"
CACHE_DIR_NAME = "dinov3_m2f_synthetic"
# Small enough that a tiny model trains on 2 CPU cores in minutes.
DEFAULT_IMAGE_SIZE = 128
DEFAULT_NUM_TRAIN = 96
DEFAULT_NUM_VAL = 24
MIN_IMAGE_SIZE = 32
# Bump when the rendering changes, so cached datasets from older code are regenerated.
_FORMAT_VERSION = 1


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/dinov3_m2f_synthetic`` (the variable defaults to ``datasets``)."""
    return os.path.join(datasets_root(), CACHE_DIR_NAME)


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _manifest_params(*, seed: int, num_train: int, num_val: int, image_size: int) -> Dict:
    return {
        "format_version": _FORMAT_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "classes": list(SYNTHETIC_CLASSES),
    }


def _split_stems(split: str, count: int) -> List[str]:
    return [f"{split}_{i:04d}" for i in range(count)]


def _write_dataset(directory: str, params: Dict) -> None:
    counts = {"train": params["num_train"], "val": params["num_val"]}
    files = {}
    for split_index, split in enumerate(SPLITS):
        image_dir = os.path.join(directory, split, "images")
        mask_dir = os.path.join(directory, split, "masks")
        os.makedirs(image_dir)
        os.makedirs(mask_dir)
        stems = _split_stems(split, counts[split])
        for index, stem in enumerate(stems):
            image, labels = render_synthetic_sample(
                seed=params["seed"], split_index=split_index, index=index,
                image_size=params["image_size"],
            )
            for path, array in (
                (os.path.join(image_dir, stem + ".png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)),
                (os.path.join(mask_dir, stem + ".png"), labels),
            ):
                if not cv2.imwrite(path, array):
                    raise RuntimeError(f"cv2.imwrite failed to write {path}")
        files[split] = stems
    # The manifest is written last: its presence marks a complete dataset.
    with open(os.path.join(directory, MANIFEST_NAME), "w") as f:
        json.dump({**params, "files": files}, f, indent=1)


def _read_manifest(root: str) -> Optional[Dict]:
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_complete_synthetic_dataset(
    root: str,
    *,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> bool:
    """Whether ``root`` holds a complete dataset generated with exactly these parameters.

    Args:
        root: dataset directory.
        seed, num_train, num_val, image_size: generation parameters to match.

    Returns:
        True when the manifest matches and every listed image and mask exists.
    """
    manifest = _read_manifest(root)
    params = _manifest_params(
        seed=seed, num_train=num_train, num_val=num_val, image_size=image_size
    )
    if manifest is None or any(manifest.get(k) != v for k, v in params.items()):
        return False
    for split in SPLITS:
        for stem in manifest.get("files", {}).get(split, ()):
            for sub in ("images", "masks"):
                if not os.path.isfile(os.path.join(root, split, sub, stem + ".png")):
                    return False
    return True


def _move_into_place(tmp_dir: str, root: str) -> None:
    """Move ``tmp_dir`` to ``root``, replacing only an empty dir or an old synthetic dataset."""
    if os.path.exists(root):
        if os.listdir(root) and _read_manifest(root) is None:
            raise RuntimeError(
                f"refusing to overwrite {root}: it is not empty and has no {MANIFEST_NAME}, so it "
                "is not a synthetic dataset written by dinov3_m2f; choose another root"
            )
        stale = tempfile.mkdtemp(
            prefix=f".{os.path.basename(root)}.old-", dir=os.path.dirname(root)
        )
        os.rename(root, os.path.join(stale, "dataset"))
        shutil.rmtree(stale)
    os.rename(tmp_dir, root)


def generate_synthetic_dataset(
    root: str,
    *,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> str:
    """Write the synthetic dataset to ``root`` (see the module docstring for the layout).

    The output depends only on the arguments: the same seed gives byte-identical files. An existing
    synthetic dataset at ``root`` is replaced; any other non-empty directory is left alone and an
    error is raised.

    Args:
        root: output directory.
        seed: random seed.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: side length of the square images (>= 32).

    Returns:
        ``root``.
    """
    _check_positive_int("num_train", num_train)
    _check_positive_int("num_val", num_val)
    _check_positive_int("image_size", image_size, MIN_IMAGE_SIZE)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    root = os.path.abspath(os.path.expanduser(root))
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    params = _manifest_params(
        seed=seed, num_train=num_train, num_val=num_val, image_size=image_size
    )
    logger.info("Generating synthetic dataset in %s (%s)", root, params)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        _write_dataset(tmp_dir, params)
        try:
            _move_into_place(tmp_dir, root)
        except OSError:
            # Another process moved a dataset into place between our check and rename.
            if not is_complete_synthetic_dataset(
                root, seed=seed, num_train=num_train, num_val=num_val, image_size=image_size
            ):
                raise
    finally:
        if os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir)
    return root


def ensure_synthetic_dataset(
    root: Optional[str] = None,
    *,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> str:
    """Return ``root`` holding the synthetic dataset, generating it if absent or incomplete.

    Args:
        root: dataset directory; ``None`` means :func:`default_synthetic_root`.
        seed, num_train, num_val, image_size: see :func:`generate_synthetic_dataset`.

    Returns:
        The dataset directory (absolute).
    """
    root = default_synthetic_root() if root is None else root
    root = os.path.abspath(os.path.expanduser(root))
    kwargs = dict(seed=seed, num_train=num_train, num_val=num_val, image_size=image_size)
    if is_complete_synthetic_dataset(root, **kwargs):
        return root
    return generate_synthetic_dataset(root, **kwargs)

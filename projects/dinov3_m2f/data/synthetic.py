"""A small LoveDA-like synthetic semantic segmentation dataset (numpy + cv2 only).

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

(_BACKGROUND, _BUILDING, _ROAD, _WATER, _BARREN, _FOREST, _AGRICULTURE) = range(7)

# Mean RGB colour of each class in the rendered images (not the palette above).
_MEAN_COLORS = np.array(
    [
        (175, 175, 165),  # background
        (170, 60, 50),  # building
        (70, 70, 75),  # road
        (35, 70, 150),  # water
        (205, 170, 115),  # barren
        (35, 95, 40),  # forest
        (135, 175, 60),  # agriculture
    ],
    dtype=np.float32,
)
# Per-pixel Gaussian noise std (grey levels) of each class.
_NOISE_STD = np.array([6.0, 4.0, 5.0, 3.0, 18.0, 6.0, 5.0], dtype=np.float32)
_FOREST_BLOTCH_CELL = 8  # px per cell of the low-frequency forest texture
_FOREST_BLOTCH_AMPLITUDE = 25.0
_STRIPE_HALF_PERIOD = 3  # px; agriculture stripes alternate every 3 px
_STRIPE_AMPLITUDE = 20.0


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/dinov3_m2f_synthetic`` (the variable defaults to ``datasets``)."""
    return os.path.join(datasets_root(), CACHE_DIR_NAME)


def _uniform_int(rng: np.random.Generator, low: float, high: float) -> int:
    return int(rng.integers(int(low), int(high) + 1))


def _random_point(rng: np.random.Generator, size: int) -> tuple:
    return (_uniform_int(rng, 0, size - 1), _uniform_int(rng, 0, size - 1))


def _paint_ellipses(labels: np.ndarray, rng: np.random.Generator, class_id: int, *, count: int,
                    min_axis: float, max_axis: float, lobes: int) -> None:
    """Paint ``count`` blobs, each the union of ``lobes`` overlapping ellipses."""
    size = labels.shape[0]
    for _ in range(count):
        cx, cy = _random_point(rng, size)
        for _ in range(lobes):
            center = (cx + _uniform_int(rng, -max_axis / 2, max_axis / 2),
                      cy + _uniform_int(rng, -max_axis / 2, max_axis / 2))
            axes = (_uniform_int(rng, min_axis, max_axis), _uniform_int(rng, min_axis, max_axis))
            angle = float(rng.uniform(0.0, 180.0))
            cv2.ellipse(labels, center, axes, angle, 0.0, 360.0, class_id, thickness=-1)


def _paint_fields(labels: np.ndarray, rng: np.random.Generator, *, count: int) -> None:
    size = labels.shape[0]
    for _ in range(count):
        center = _random_point(rng, size)
        dims = (float(rng.uniform(0.25, 0.45) * size), float(rng.uniform(0.2, 0.35) * size))
        corners = cv2.boxPoints((center, dims, float(rng.uniform(0.0, 90.0))))
        cv2.fillPoly(labels, [np.round(corners).astype(np.int32)], _AGRICULTURE)


def _paint_roads(labels: np.ndarray, rng: np.random.Generator, *, count: int) -> None:
    size = labels.shape[0]
    thickness = max(3, int(round(0.06 * size)))
    for _ in range(count):
        # A straight road crossing the image from one edge to the opposite one.
        a, b = _uniform_int(rng, 0, size - 1), _uniform_int(rng, 0, size - 1)
        if rng.random() < 0.5:
            p0, p1 = (a, 0), (b, size - 1)
        else:
            p0, p1 = (0, a), (size - 1, b)
        cv2.line(labels, p0, p1, _ROAD, thickness=thickness)


def _paint_buildings(labels: np.ndarray, rng: np.random.Generator, *, count: int) -> None:
    size = labels.shape[0]
    for _ in range(count):
        x0, y0 = _random_point(rng, size)
        w = _uniform_int(rng, 0.06 * size, 0.16 * size)
        h = _uniform_int(rng, 0.06 * size, 0.16 * size)
        cv2.rectangle(labels, (x0, y0), (x0 + w, y0 + h), _BUILDING, thickness=-1)


def _render_layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """Class-id layout [H, W] uint8; classes painted later cover earlier ones."""
    labels = np.full((size, size), _BACKGROUND, dtype=np.uint8)
    _paint_fields(labels, rng, count=_uniform_int(rng, 1, 2))
    _paint_ellipses(labels, rng, _BARREN, count=_uniform_int(rng, 1, 2),
                    min_axis=0.08 * size, max_axis=0.16 * size, lobes=2)
    _paint_ellipses(labels, rng, _FOREST, count=_uniform_int(rng, 1, 2),
                    min_axis=0.08 * size, max_axis=0.18 * size, lobes=3)
    _paint_ellipses(labels, rng, _WATER, count=1,
                    min_axis=0.08 * size, max_axis=0.18 * size, lobes=2)
    _paint_roads(labels, rng, count=_uniform_int(rng, 1, 2))
    _paint_buildings(labels, rng, count=_uniform_int(rng, 3, 6))
    return labels


def _render_image(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 image [H, W, 3] for a class-id layout."""
    size = labels.shape[0]
    image = _MEAN_COLORS[labels]  # [H, W, 3]
    image = image + rng.normal(0.0, 1.0, size=image.shape).astype(np.float32) * _NOISE_STD[
        labels
    ][..., None]

    cells = max(1, size // _FOREST_BLOTCH_CELL)
    blotch = cv2.resize(rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32),
                        (size, size), interpolation=cv2.INTER_LINEAR)  # [H, W]
    forest = labels == _FOREST
    image[forest] += (_FOREST_BLOTCH_AMPLITUDE * blotch[forest])[:, None]

    theta = float(rng.uniform(0.0, np.pi))
    ys, xs = np.mgrid[0:size, 0:size]
    phase = np.floor((xs * np.cos(theta) + ys * np.sin(theta)) / _STRIPE_HALF_PERIOD)
    stripes = np.where(phase % 2 == 0, _STRIPE_AMPLITUDE, -_STRIPE_AMPLITUDE)  # [H, W]
    fields = labels == _AGRICULTURE
    image[fields] += stripes[fields][:, None].astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _add_no_data_patch(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray) -> None:
    """Black out a small corner patch and mark it ignore, like LoveDA's no-data pixels."""
    size = labels.shape[0]
    ph = _uniform_int(rng, 0.05 * size, 0.1 * size)
    pw = _uniform_int(rng, 0.05 * size, 0.1 * size)
    rows = slice(0, ph) if rng.random() < 0.5 else slice(size - ph, size)
    cols = slice(0, pw) if rng.random() < 0.5 else slice(size - pw, size)
    image[rows, cols] = 0
    labels[rows, cols] = IGNORE_VALUE


def render_synthetic_sample(*, seed: int, split_index: int, index: int, image_size: int):
    """Render one sample deterministically.

    Args:
        seed: dataset seed.
        split_index: position of the split in ``SPLITS``.
        index: sample index within the split.
        image_size: side length of the square image.

    Returns:
        (image [H, W, 3] uint8 RGB, labels [H, W] uint8 with class ids and 255 = ignore).
    """
    rng = np.random.default_rng([seed, split_index, index])
    labels = _render_layout(rng, image_size)
    image = _render_image(rng, labels)
    _add_no_data_patch(rng, image, labels)
    return image, labels


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

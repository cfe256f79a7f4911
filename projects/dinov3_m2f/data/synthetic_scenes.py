"""Rendering of one synthetic LoveDA-like scene: a class layout and its aerial-looking image.

The seven classes (:data:`~.loveda.LOVEDA_CLASSES`) each get their own mean colour and texture so a
small model learns the task in minutes on a CPU (see :mod:`.synthetic` for the table and for the
dataset on disk). Every scene also has a small black no-data patch in one corner whose label is
``IGNORE_VALUE`` (255), like LoveDA's no-data pixels after the label shift.
"""
import cv2
import numpy as np

from .masks import IGNORE_VALUE

__all__ = ["render_synthetic_sample"]

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

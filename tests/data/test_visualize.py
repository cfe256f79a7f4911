"""dinov3_m2f.data.visualize: the overlay shared by tools/demo.py and tools/check_dataset.py."""
import numpy as np
import pytest

from dinov3_m2f.data.visualize import class_colors, draw_overlay

NAMES = ["sky", "road", "tree"]
COLORS = [(0, 0, 255), (255, 0, 0), (0, 255, 0)]
H, W = 40, 30


def _sample():
    image = np.full((H, W, 3), 100, dtype=np.uint8)
    labels = np.zeros((H, W), dtype=np.int64)
    labels[20:, :] = 1  # road below row 20, no tree
    labels[:5, :5] = 255  # ignored corner
    return image, labels


def test_classes_are_blended_boundaries_opaque_and_ignore_untouched():
    image, labels = _sample()
    canvas = draw_overlay(image, labels, class_names=NAMES, colors=COLORS, alpha=0.5)
    assert canvas.dtype == np.uint8 and canvas.shape[1] > W and canvas.shape[0] >= H
    overlay = canvas[:H, :W]
    np.testing.assert_array_equal(overlay[10, 15], [50, 50, 178])  # 0.5 * 100 + 0.5 * sky, rounded
    np.testing.assert_array_equal(overlay[30, 15], [178, 50, 50])  # road
    np.testing.assert_array_equal(overlay[19, 15], COLORS[0])  # sky pixel on the sky/road boundary
    np.testing.assert_array_equal(overlay[:5, :5], image[:5, :5])  # ignore: not coloured


def test_legend_shows_the_classes_present_in_their_colours():
    image, labels = _sample()
    legend = draw_overlay(image, labels, class_names=NAMES, colors=COLORS)[:, W:]

    def has(color):
        return bool((legend == color).all(axis=-1).any())

    assert has(COLORS[0]) and has(COLORS[1]) and not has(COLORS[2])  # tree is absent
    assert (legend < 128).all(axis=-1).any()  # text drawn


def test_a_legend_taller_than_the_image_extends_the_canvas():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    labels = np.array([[0, 1, 2, 255]] * 4)
    canvas = draw_overlay(image, labels, class_names=NAMES, colors=COLORS)
    assert canvas.shape[0] > 4
    np.testing.assert_array_equal(canvas[:4, 3], image[:, 3])  # ignore column


def test_bad_arguments_are_named():
    image, labels = _sample()
    with pytest.raises(ValueError, match="labels"):
        draw_overlay(image, labels[:-1], class_names=NAMES, colors=COLORS)
    with pytest.raises(ValueError, match="2 colors for 3 class names"):
        draw_overlay(image, labels, class_names=NAMES, colors=COLORS[:2])
    with pytest.raises(ValueError, match="RGB uint8"):
        draw_overlay(image.astype(np.float32), labels, class_names=NAMES, colors=COLORS)


def test_generated_palette_is_fixed():
    assert class_colors(5) == class_colors(5) and len(set(class_colors(50))) == 50
    assert all(0 <= c <= 255 for rgb in class_colors(5) for c in rgb)

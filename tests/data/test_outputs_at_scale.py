"""The shared writer of tools/demo.py and tools/infer_onnx.py on large images and failing ones."""
import logging

import numpy as np
from PIL import Image

from dinov3_m2f.data.outputs import segment_image_files, write_segmentation
from dinov3_m2f.data.visualize import downsample_for_overlay

NAMES = ["a", "b"]


def test_large_overlays_are_drawn_on_a_downsampled_copy(tmp_path):
    image = np.zeros((3000, 1000, 3), dtype=np.uint8)
    labels = np.zeros((3000, 1000), dtype=np.int64)
    labels[:, 500:] = 1
    overlay_path, labels_path = write_segmentation(image, labels, output_dir=str(tmp_path), stem="x",
                                                   class_names=NAMES, overlay_max_size=300)
    overlay = np.asarray(Image.open(overlay_path))
    assert overlay.shape[0] == 300 and overlay.shape[1] > 100  # 300 x 100 overlay + legend
    assert np.asarray(Image.open(labels_path)).shape == (3000, 1000)  # full-size labels
    small_image, small_labels = downsample_for_overlay(image, labels, max_size=300)
    assert small_image.shape == (300, 100, 3) and small_labels.shape == (300, 100)
    assert (small_labels[:, :50] == 0).all() and (small_labels[:, 50:] == 1).all()
    kept_image, kept_labels = downsample_for_overlay(image, labels, max_size=3000)
    assert kept_image is image and kept_labels is labels  # small enough: not copied


def test_one_failing_image_never_aborts_the_batch(tmp_path, caplog):
    files = []
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 6)).save(tmp_path / f"{name}.png")
        files.append(str(tmp_path / f"{name}.png"))

    def segment(image):
        if len(calls) == 1:
            calls.append("fail")
            raise MemoryError("out of memory")
        calls.append("ok")
        return np.zeros(image.shape[:2], dtype=np.int64)

    calls = []
    with caplog.at_level(logging.WARNING):
        skipped = segment_image_files(files, segment, output_dir=str(tmp_path / "out"), class_names=NAMES)
    assert skipped == [files[1]] and calls == ["ok", "fail", "ok"]
    assert any("b.png" in r.getMessage() and "MemoryError" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{n}_{k}.png" for n in ("a", "c") for k in ("labels", "overlay"))
    big = segment_image_files(files[:1], segment, output_dir=str(tmp_path / "o2"), class_names=NAMES,
                              max_pixels=47, too_large_hint="use slide mode")
    assert big == files[:1]
    assert any("6x8 = 48 pixels, over the 47" in m and "use slide mode" in m
               for m in (r.getMessage() for r in caplog.records))

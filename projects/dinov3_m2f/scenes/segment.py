"""Segment one scene block by block and write its outputs (no detectron2).

Per scene ``<stem>.<ext>`` in the output folder:

* ``<stem>_labels.tif`` (raster scenes) or ``<stem>_labels.png`` (plain images): uint8 class ids,
  255 at nodata (see :mod:`.writers` for the GeoTIFF's georeference, colour table and tags);
* with ``confidence``: ``<stem>_confidence.tif`` / ``.png``: the top class score x 255 (uint8,
  scores clipped to 0..1; Mask2Former scores are not normalized), 0 at nodata;
* with ``overlay_max_size``: ``<stem>_overlay.png``, the labels drawn over a copy of the scene
  downsampled to at most that many pixels a side (:mod:`.overlay`).

The labels file is written last, so its presence means the scene is done (restarts skip it).
"""
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ..data.masks import IGNORE_VALUE
from ..data.outputs import check_label_png_classes
from ..modeling.blockwise import DEFAULT_BLOCK_SIZE, blockwise_slide_inference, count_window_runs
from .overlay import LabelPreview, write_overlay
from .readers import Scene, is_plain_image
from .writers import GeoTiffWriter, PngWriter, RasterWriter, committed

__all__ = ["SceneOutputs", "SlideSettings", "scene_outputs", "segment_scene"]

logger = logging.getLogger(__name__)

CONFIDENCE_SCALE = 255.0


@dataclass(frozen=True)
class SlideSettings:
    """Sliding windows and output blocks of the block-wise inference."""

    crop_size: Tuple[int, int]
    stride: Tuple[int, int]
    block_size: Tuple[int, int] = DEFAULT_BLOCK_SIZE
    slide_batch: int = 1


@dataclass(frozen=True)
class SceneOutputs:
    """The output files of one scene (see the module docstring)."""

    labels: str
    confidence: str
    overlay: str


def scene_outputs(path: str, output_dir: str) -> SceneOutputs:
    """Output paths of the scene ``path`` (``.tif`` for rasters, ``.png`` for plain images)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    ext = ".png" if is_plain_image(path) else ".tif"
    base = os.path.join(output_dir, stem)
    return SceneOutputs(base + "_labels" + ext, base + "_confidence" + ext, base + "_overlay.png")


def _writer(scene: Scene, path: str, **kwargs) -> RasterWriter:
    if path.endswith(".png"):
        return PngWriter(path, height=scene.height, width=scene.width)
    return GeoTiffWriter(path, height=scene.height, width=scene.width, crs=scene.crs,
                         transform=scene.transform, **kwargs)


def segment_scene(
    predict: Callable[[torch.Tensor], torch.Tensor],
    scene: Scene,
    *,
    output_dir: str,
    num_classes: int,
    settings: SlideSettings,
    class_names: Optional[Sequence[str]] = None,
    colors: Optional[Sequence[Sequence[int]]] = None,
    confidence: bool = False,
    overviews: bool = False,
    overlay_max_size: int = 0,
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
) -> SceneOutputs:
    """Block-wise sliding-window segmentation of ``scene`` into ``output_dir`` (existing folder).

    Args:
        predict: RGB crops [k, 3, h, w] float32 0..255 -> scores [k, num_classes, h, w].
        scene: the input, read window by window.
        output_dir: where the outputs go (named by :func:`scene_outputs`).
        num_classes: C (at most 255: the labels are uint8 with 255 for nodata).
        settings: windows, blocks and windows per ``predict`` call.
        class_names, colors: written into the label GeoTIFF (names, colour table) and used by
            the overlay.
        confidence: also write the confidence raster.
        overviews: build GeoTIFF overviews.
        overlay_max_size: > 0: also draw an overlay at most this many pixels a side.
        device: where crops and open blocks go.
        progress: show a progress bar of the windows with an ETA.

    Returns:
        The paths written (``confidence`` / ``overlay`` only when asked for).
    """
    check_label_png_classes(num_classes)
    outputs = scene_outputs(scene.path, output_dir)
    _, runs = count_window_runs(scene.height, scene.width, crop_size=settings.crop_size,
                                stride=settings.stride, block_size=settings.block_size)
    bar = tqdm(total=runs, desc=os.path.basename(scene.path), unit="window", disable=not progress,
               leave=False)

    def read_window(top: int, left: int, height: int, width: int) -> torch.Tensor:
        bar.update(1)
        crop = scene.read(top, left, height, width)  # [h, w, 3] uint8
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float()  # [3, h, w]

    blocks = blockwise_slide_inference(
        predict, read_window, image_size=(scene.height, scene.width), crop_size=settings.crop_size,
        stride=settings.stride, num_classes=num_classes, block_size=settings.block_size,
        slide_batch=settings.slide_batch, device=device)
    preview = LabelPreview(scene.height, scene.width, max_size=overlay_max_size) if overlay_max_size > 0 else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(bar)
        # Committed in reverse order: the labels file, whose presence marks the scene done, last.
        label_writer = stack.enter_context(committed(_writer(
            scene, outputs.labels, class_names=class_names, colors=colors, overviews=overviews,
            description="class id")))
        confidence_writer = stack.enter_context(committed(_writer(
            scene, outputs.confidence, nodata=None, overviews=overviews,
            description="top class score x 255"))) if confidence else None
        for top, left, scores in blocks:  # scores [C, h, w]
            top_scores, labels = scores.max(dim=0)  # [h, w]
            labels = labels.to(torch.uint8).cpu().numpy()
            valid = scene.valid(top, left, *labels.shape)
            if valid is not None:
                labels[~valid] = IGNORE_VALUE
            label_writer.write(top, left, labels)
            if preview is not None:
                preview.add(top, left, labels)
            if confidence_writer is not None:
                conf = (top_scores.clamp(0.0, 1.0) * CONFIDENCE_SCALE).round().to(torch.uint8).cpu().numpy()
                if valid is not None:
                    conf[~valid] = 0
                confidence_writer.write(top, left, conf)
            del scores, top_scores  # freed before the next block is computed, not after
        if preview is not None:
            write_overlay(scene.preview(overlay_max_size), preview.labels, outputs.overlay,
                          class_names=class_names, colors=colors, num_classes=num_classes)
    logger.info("%s: %d window runs -> %s", scene.path, runs, outputs.labels)
    return outputs

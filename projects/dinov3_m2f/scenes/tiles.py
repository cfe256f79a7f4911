"""Training tiles cut from a scene, with the band selection of inference (no detectron2).

:func:`cut_scene_tiles` reads a scene through :func:`~dinov3_m2f.scenes.readers.open_scene` (so
the bands, value range and nodata handling are exactly those of ``tools/segment_scenes.py``) and
writes ``images/<stem>_<row>_<col>.png`` tiles, plus, with a label raster of the same size,
``masks/<stem>_<row>_<col>.png`` whose nodata pixels are 255 (ignore). That is the folder dataset
layout (configs/folder). The selection is saved as ``band_selection.json`` in the output folder,
for ``tools/segment_scenes.py --band-file``.
"""
import logging
import os
from typing import List, Optional

import numpy as np
from PIL import Image

from ..atomic_files import atomic_open
from ..data.masks import IGNORE_VALUE, write_label_png
from .bands import BAND_FILE_NAME, BandSelection
from .readers import RasterScene, Scene, open_scene

__all__ = ["cut_scene_tiles"]

logger = logging.getLogger(__name__)


def _tile_starts(size: int, tile: int) -> List[int]:
    """Tile starts along an axis: every ``tile`` pixels, the last one flush with the end."""
    if size <= tile:
        return [0]
    return sorted({*range(0, size - tile, tile), size - tile})


def _read_labels(labels: RasterScene, top: int, left: int, height: int, width: int) -> np.ndarray:
    values = labels.read_band(1, top, left, height, width)  # [h, w]
    mask = labels.valid(top, left, height, width)
    out = values.astype(np.uint8)
    if mask is not None:
        out[~mask] = IGNORE_VALUE
    return out


def cut_scene_tiles(
    scene_path: str,
    output_dir: str,
    *,
    tile_size: int,
    selection: Optional[BandSelection] = None,
    labels_path: Optional[str] = None,
    max_nodata_fraction: float = 0.5,
) -> List[str]:
    """Write the tiles of one scene; returns the image tiles written.

    Args:
        scene_path: the scene (a raster GDAL reads, or a plain image).
        output_dir: gets ``images/``, ``masks/`` (with ``labels_path``) and ``band_selection.json``.
        tile_size: tile side in pixels (the last tile of each axis ends at the scene border).
        selection: bands and value range (None: the 8-bit default).
        labels_path: a single-band raster of class ids, the scene's size; its nodata is ignore.
        max_nodata_fraction: tiles with more nodata than this are not written.
    """
    scene: Scene = open_scene(scene_path, selection=selection)
    labels = None
    try:
        if labels_path is not None:
            labels = RasterScene(labels_path, selection=BandSelection.create(bands=[1, 1, 1], low=[0], high=[255]))
            if labels.dtype != "uint8":
                raise ValueError(f"{labels_path} holds {labels.dtype} values; class ids must be uint8")
            if (labels.height, labels.width) != (scene.height, scene.width):
                raise ValueError(f"{labels_path} is {labels.height}x{labels.width}; its scene {scene_path} "
                                 f"is {scene.height}x{scene.width}")
        os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
        if labels is not None:
            os.makedirs(os.path.join(output_dir, "masks"), exist_ok=True)
        if isinstance(scene, RasterScene):
            scene.selection.save(os.path.join(output_dir, BAND_FILE_NAME))
        stem = os.path.splitext(os.path.basename(scene_path))[0]
        written = []
        for top in _tile_starts(scene.height, tile_size):
            for left in _tile_starts(scene.width, tile_size):
                height, width = min(tile_size, scene.height), min(tile_size, scene.width)
                valid = scene.valid(top, left, height, width)
                if valid is not None and 1.0 - valid.mean() > max_nodata_fraction:
                    continue
                name = f"{stem}_{top}_{left}.png"
                path = os.path.join(output_dir, "images", name)
                with atomic_open(path, "wb", suffix=".png") as f:
                    Image.fromarray(scene.read(top, left, height, width)).save(f, format="PNG")
                if labels is not None:
                    mask = _read_labels(labels, top, left, height, width)
                    if valid is not None:
                        mask[~valid] = IGNORE_VALUE
                    write_label_png(mask, os.path.join(output_dir, "masks", name))
                written.append(path)
    finally:
        scene.close()
        if labels is not None:
            labels.close()
    logger.info("%s: %d tiles of %d px into %s", scene_path, len(written), tile_size, output_dir)
    return written

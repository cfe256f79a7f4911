"""Label (and confidence) rasters written block by block, each file atomically.

* For a raster scene, :class:`GeoTiffWriter` writes a tiled, DEFLATE-compressed, single-band
  uint8 GeoTIFF with the scene's CRS and transform, nodata 255 (ignore), a colour table of the
  classes, the class names in its metadata (tag ``class_names``, JSON list, and
  ``class_<id>=<name>`` tags) and optionally overviews, so that GIS tools (QGIS) show it at once.
* For a plain image, :class:`PngWriter` fills a uint8 array and writes a PNG at the end
  (plain images are small).

Both are written to a temporary file next to the destination and renamed over it on
:meth:`commit`, so a file at the destination is always complete.
"""
import contextlib
import json
from typing import Iterator, Optional, Sequence

import numpy as np

from ..atomic_files import atomic_output_path
from ..data.masks import IGNORE_VALUE, write_label_png

__all__ = ["GEOTIFF_TILE", "GeoTiffWriter", "OVERVIEW_FACTORS", "PngWriter", "RasterWriter", "committed"]

# Internal tile side of the GeoTIFFs (a multiple of 16, as TIFF requires); rasters smaller than
# a tile are written in strips.
GEOTIFF_TILE = 256
# Overview levels, written with --overviews (nearest for labels, average for confidence).
OVERVIEW_FACTORS = (2, 4, 8, 16, 32)


class RasterWriter:
    """Writes uint8 blocks of one single-band output; :meth:`commit` makes the file appear."""

    def write(self, top: int, left: int, block: np.ndarray) -> None:
        """Store a uint8 block [h, w] at (top, left)."""
        raise NotImplementedError

    def commit(self) -> None:
        """Finish the file and move it to its destination."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the unfinished file (the destination is left as it was)."""


class PngWriter(RasterWriter):
    """An 8-bit single-channel PNG, held in memory until :meth:`commit`."""

    def __init__(self, path: str, *, height: int, width: int):
        self.path = path
        self.array = np.full((height, width), IGNORE_VALUE, dtype=np.uint8)

    def write(self, top: int, left: int, block: np.ndarray) -> None:
        self.array[top : top + block.shape[0], left : left + block.shape[1]] = block

    def commit(self) -> None:
        write_label_png(self.array, self.path)


class GeoTiffWriter(RasterWriter):
    """A tiled, compressed single-band uint8 GeoTIFF, written by window."""

    def __init__(
        self,
        path: str,
        *,
        height: int,
        width: int,
        crs: object,
        transform: object,
        class_names: Optional[Sequence[str]] = None,
        colors: Optional[Sequence[Sequence[int]]] = None,
        nodata: Optional[int] = IGNORE_VALUE,
        overviews: bool = False,
        description: str = "",
    ):
        """
        Args:
            path: destination ``.tif``.
            height, width: raster size (the scene's).
            crs, transform: the scene's georeference (None for none).
            class_names, colors: label rasters: class name and RGB colour per id (colour table).
            nodata: the value of pixels without a result.
            overviews: build overviews (``OVERVIEW_FACTORS``) on commit.
            description: band description (e.g. "class id", "confidence x 255").
        """
        import rasterio

        self._rasterio = rasterio
        self.path, self.overviews, self.class_names = path, overviews, class_names
        self._stack = contextlib.ExitStack()
        tmp_path = self._stack.enter_context(atomic_output_path(path, suffix=".tif"))
        tiled = height >= GEOTIFF_TILE and width >= GEOTIFF_TILE
        profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="uint8",
                       crs=crs, transform=transform, nodata=nodata, compress="deflate",
                       tiled=tiled, BIGTIFF="IF_SAFER")
        if tiled:
            profile.update(blockxsize=GEOTIFF_TILE, blockysize=GEOTIFF_TILE)
        self._dataset = rasterio.open(tmp_path, "w", **profile)
        if description:
            self._dataset.set_band_description(1, description)
        if class_names is not None:
            self._dataset.update_tags(class_names=json.dumps(list(class_names)),
                                      **{f"class_{i}": name for i, name in enumerate(class_names)})
            if colors is not None:
                self._dataset.write_colormap(1, {i: tuple(int(c) for c in rgb) for i, rgb in enumerate(colors)})

    def write(self, top: int, left: int, block: np.ndarray) -> None:
        window = self._rasterio.windows.Window(left, top, block.shape[1], block.shape[0])
        self._dataset.write(block[None], window=window)

    def commit(self) -> None:
        if self.overviews:
            factors = [f for f in OVERVIEW_FACTORS if min(self._dataset.height, self._dataset.width) // f >= 1]
            resampling = (self._rasterio.enums.Resampling.nearest if self.class_names is not None
                          else self._rasterio.enums.Resampling.average)
            self._dataset.build_overviews(factors, resampling)
        self._dataset.close()
        self._stack.close()

    def abort(self) -> None:
        self._dataset.close()
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


@contextlib.contextmanager
def committed(writer: RasterWriter) -> Iterator[RasterWriter]:
    """Commit ``writer`` when the block succeeds, abort it otherwise."""
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()

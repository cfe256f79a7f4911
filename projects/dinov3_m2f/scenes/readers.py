"""Scenes read window by window: GDAL rasters through rasterio, plain images from memory.

:func:`open_scene` returns a :class:`Scene` for any input of ``tools/segment_scenes.py``:

* a plain image (PNG, JPEG, BMP, WebP) is decoded whole by ``data.image.read_image`` (the
  reader of training and ``tools/demo.py``; such files are small) into an :class:`ArrayScene`;
* anything else (GeoTIFF, JPEG 2000, VRT, any raster GDAL reads) is a :class:`RasterScene`
  (needs the ``geo`` extra, rasterio): pixels are read per window, the selected bands scaled by
  a :class:`~dinov3_m2f.scenes.bands.BandSelection`, and a pixel is *nodata* when GDAL's mask
  of any selected band marks it so (the nodata value, an alpha band or a mask band). Nodata
  pixels are fed to the model as 0 and labelled 255 (ignore) in the output, never a class.
"""
import os
from typing import Optional

import cv2
import numpy as np

from ..data.image import UnreadableImageError, read_image
from ..data.visualize import preview_shape
from .bands import BandSelection, default_band_selection

__all__ = ["ArrayScene", "PLAIN_IMAGE_SUFFIXES", "RasterScene", "Scene", "UnreadableSceneError",
           "is_plain_image", "open_scene"]

# Inputs decoded whole with data.image.read_image; every other suffix goes through GDAL.
PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_GEO_EXTRA_HINT = "install the geo extra: pip install -e '.[geo]' (rasterio)"


class UnreadableSceneError(ValueError):
    """A scene that cannot be opened or read; the message names the file."""


class Scene:
    """A scene read by window. Attributes: ``path``, ``height``, ``width``, ``crs`` and
    ``transform`` (None for plain images)."""

    path: str
    height: int
    width: int
    crs: object = None
    transform: object = None

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """RGB uint8 [height, width, 3] of a window (nodata pixels 0)."""
        raise NotImplementedError

    def valid(self, top: int, left: int, height: int, width: int) -> Optional[np.ndarray]:
        """bool [height, width], False at nodata; None when the scene has no nodata."""
        raise NotImplementedError

    def preview(self, max_size: int) -> np.ndarray:
        """RGB uint8 copy of the whole scene, downsampled to at most ``max_size`` a side."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""


class ArrayScene(Scene):
    """A decoded RGB uint8 image [H, W, 3] (no nodata, no georeference)."""

    def __init__(self, image: np.ndarray, *, path: str = "<array>"):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{path}: expected RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        self.image, self.path = image, path
        self.height, self.width = image.shape[:2]

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.image[top : top + height, left : left + width]

    def valid(self, top: int, left: int, height: int, width: int) -> Optional[np.ndarray]:
        return None

    def preview(self, max_size: int) -> np.ndarray:
        height, width = preview_shape(self.height, self.width, max_size)
        if (height, width) == (self.height, self.width):
            return self.image
        return cv2.resize(self.image, (width, height), interpolation=cv2.INTER_AREA)


class RasterScene(Scene):
    """A GDAL raster opened with rasterio; three bands selected and scaled to uint8."""

    def __init__(self, path: str, *, selection: Optional[BandSelection] = None):
        try:
            import rasterio
        except ImportError as e:
            raise ImportError(f"reading {path} needs rasterio: {_GEO_EXTRA_HINT}") from e
        self._rasterio = rasterio
        try:
            self._dataset = rasterio.open(path)
        except rasterio.errors.RasterioError as e:
            raise UnreadableSceneError(f"{path}: cannot be opened as a raster ({e})") from e
        dataset = self._dataset
        self.path, self.height, self.width = path, dataset.height, dataset.width
        self.crs, self.transform, self.dtype = dataset.crs, dataset.transform, dataset.dtypes[0]
        self.selection = default_band_selection(dtype=dataset.dtypes[0], count=dataset.count,
                                                path=path, selection=selection)
        bands = list(self.selection.bands)
        # GDAL's mask flags per band: all-valid bands need no mask reads.
        self._masked = any(rasterio.enums.MaskFlags.all_valid not in dataset.mask_flag_enums[b - 1]
                           for b in bands)

    def _window(self, top: int, left: int, height: int, width: int):
        return self._rasterio.windows.Window(left, top, width, height)

    def _read(self, reader, top: int, left: int, height: int, width: int, **kwargs) -> np.ndarray:
        try:
            return reader(list(self.selection.bands), window=self._window(top, left, height, width), **kwargs)
        except self._rasterio.errors.RasterioError as e:
            raise UnreadableSceneError(f"{self.path}: cannot read the window at row {top}, column "
                                       f"{left} ({e})") from e

    def read_band(self, band: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """The raw values [height, width] of one 1-based band in a window (no scaling)."""
        try:
            return self._dataset.read(band, window=self._window(top, left, height, width))
        except self._rasterio.errors.RasterioError as e:
            raise UnreadableSceneError(f"{self.path}: cannot read band {band} ({e})") from e

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        values = self._read(self._dataset.read, top, left, height, width)  # [3, h, w]
        image = self.selection.to_uint8(values)  # [h, w, 3]
        valid = self.valid(top, left, height, width)
        if valid is not None:
            image[~valid] = 0
        return image

    def valid(self, top: int, left: int, height: int, width: int) -> Optional[np.ndarray]:
        if not self._masked:
            return None
        masks = self._read(self._dataset.read_masks, top, left, height, width)  # [3, h, w] 0 = nodata
        return np.all(masks > 0, axis=0)

    def preview(self, max_size: int) -> np.ndarray:
        height, width = preview_shape(self.height, self.width, max_size)
        try:
            values = self._dataset.read(list(self.selection.bands), out_shape=(3, height, width),
                                        resampling=self._rasterio.enums.Resampling.average)
        except self._rasterio.errors.RasterioError as e:
            raise UnreadableSceneError(f"{self.path}: cannot read a preview ({e})") from e
        return self.selection.to_uint8(values)

    def close(self) -> None:
        self._dataset.close()


def is_plain_image(path: str) -> bool:
    """Whether ``path`` is decoded whole (PNG, JPEG, ...) rather than read through GDAL."""
    return os.path.splitext(path)[1].lower() in PLAIN_IMAGE_SUFFIXES


def open_scene(path: str, *, selection: Optional[BandSelection] = None) -> Scene:
    """Open ``path`` as a scene (see the module docstring).

    Args:
        path: a plain image or a raster GDAL reads.
        selection: bands and value range of a raster; None = the 8-bit default. Plain images are
            RGB uint8 already and refuse a selection.

    Raises:
        UnreadableSceneError: the file cannot be opened or decoded (the message names it).
    """
    if is_plain_image(path):
        if selection is not None:
            raise ValueError(f"{path} is a plain RGB image; a band selection applies to rasters only")
        try:
            return ArrayScene(read_image(path), path=path)
        except UnreadableImageError as e:
            raise UnreadableSceneError(str(e)) from e
    return RasterScene(path, selection=selection)

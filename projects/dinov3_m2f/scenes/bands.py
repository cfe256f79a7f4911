"""Which raster bands feed the model's three input channels, and how their values become 0..255.

A scene (GeoTIFF or any GDAL raster) may have any number of bands, of any data type (16-bit
satellite products are common). The model takes RGB uint8, so the choice is made explicitly, and
the same :class:`BandSelection` is applied when training tiles are cut from a scene
(``tools/prepare_scene_tiles.py``) and when a scene is segmented (``tools/segment_scenes.py``):

* ``bands``: three 1-based band indexes, in the order of the model's R, G, B inputs (e.g.
  ``3 2 1`` for a Blue, Green, Red, NIR product);
* ``low`` and ``high``: per selected band, the value mapped to 0 and to 255; values in between
  are scaled linearly and rounded, values outside are clipped. One value applies to all three.

Without a selection, only 8-bit rasters are accepted: bands 1, 2, 3 (a one-band raster: band 1
three times) over 0..255. Any other data type needs an explicit range; it is never guessed.
The selection is saved as ``band_selection.json`` next to training tiles, and
``tools/segment_scenes.py --band-file`` reads it back.
"""
import argparse
import json
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..atomic_files import atomic_open

__all__ = ["BAND_FILE_NAME", "BandSelection", "add_band_arguments", "band_selection_from_args",
           "default_band_selection", "read_band_file"]

BAND_FILE_NAME = "band_selection.json"
RGB_CHANNELS = 3
UINT8_MAX = 255


def _three(name: str, values: Sequence[float]) -> Tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * RGB_CHANNELS
    if len(values) != RGB_CHANNELS:
        raise ValueError(f"{name} needs 1 or {RGB_CHANNELS} values (one per selected band), got {list(values)}")
    return values


@dataclass(frozen=True)
class BandSelection:
    """Three 1-based bands and the per-band value range mapped onto 0..255."""

    bands: Tuple[int, int, int]
    low: Tuple[float, float, float]
    high: Tuple[float, float, float]

    @classmethod
    def create(cls, *, bands: Sequence[int], low: Sequence[float], high: Sequence[float]) -> "BandSelection":
        """Check and build a selection.

        Args:
            bands: three 1-based band indexes (R, G, B inputs of the model).
            low: value(s) mapped to 0: one for all bands, or one per band.
            high: value(s) mapped to 255, each above its ``low``.
        """
        bands = tuple(int(b) for b in bands)
        if len(bands) != RGB_CHANNELS or min(bands) < 1:
            raise ValueError(f"bands must be {RGB_CHANNELS} 1-based band indexes, got {list(bands)}")
        low, high = _three("low", low), _three("high", high)
        if any(h <= lo for lo, h in zip(low, high)):
            raise ValueError(f"every high value must exceed its low value, got low={list(low)} high={list(high)}")
        return cls(bands, low, high)

    def check_band_count(self, count: int, *, path: str) -> None:
        """Raise naming ``path`` when a selected band is not among its ``count`` bands."""
        if max(self.bands) > count:
            raise ValueError(f"{path} has {count} band(s); the band selection asks for bands {list(self.bands)}")

    def to_uint8(self, values: np.ndarray) -> np.ndarray:
        """Scale the selected bands [3, h, w] (any numeric type) to RGB uint8 [h, w, 3]."""
        low = np.asarray(self.low, dtype=np.float64)[:, None, None]  # [3, 1, 1]
        high = np.asarray(self.high, dtype=np.float64)[:, None, None]
        scaled = (values.astype(np.float32) - low.astype(np.float32)) / (high - low).astype(np.float32)
        scaled = np.rint(np.clip(scaled, 0.0, 1.0) * UINT8_MAX).astype(np.uint8)  # [3, h, w]
        return np.ascontiguousarray(scaled.transpose(1, 2, 0))

    def save(self, path: str) -> None:
        """Write the selection as JSON (atomically)."""
        with atomic_open(path, "w", suffix=".json") as f:
            json.dump(asdict(self), f, indent=2)


def read_band_file(path: str) -> BandSelection:
    """Read a selection saved by :meth:`BandSelection.save`; errors name ``path``."""
    try:
        with open(path) as f:
            fields = json.load(f)
        return BandSelection.create(bands=fields["bands"], low=fields["low"], high=fields["high"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a band selection file ({e})") from e


def default_band_selection(*, dtype: str, count: int, path: str,
                           selection: Optional[BandSelection] = None) -> BandSelection:
    """``selection`` checked against the raster, or the 8-bit default; errors name ``path``.

    Args:
        dtype: the raster's data type name (e.g. "uint8", "uint16").
        count: its number of bands.
        path: the raster, for messages.
        selection: the user's choice, if any.
    """
    if selection is None:
        if dtype != "uint8":
            raise ValueError(
                f"{path} holds {dtype} values: choose the bands and their value range explicitly "
                "(e.g. --bands 3 2 1 --band-low 0 --band-high 3000, or --band-file); only 8-bit "
                "rasters have a default (bands 1 2 3 over 0..255)"
            )
        bands = (1, 2, 3) if count >= RGB_CHANNELS else (1, 1, 1)
        selection = BandSelection.create(bands=bands, low=[0], high=[UINT8_MAX])
    selection.check_band_count(count, path=path)
    return selection


def add_band_arguments(parser: argparse.ArgumentParser, *, band_file: bool = True) -> None:
    """The band options shared by the scene tools: --bands, --band-low, --band-high (--band-file)."""
    parser.add_argument("--bands", type=int, nargs=3, default=None, metavar="B",
                        help="1-based raster bands fed as R G B, e.g. 3 2 1")
    parser.add_argument("--band-low", type=float, nargs="+", default=None,
                        help="value(s) mapped to 0: one, or one per band")
    parser.add_argument("--band-high", type=float, nargs="+", default=None,
                        help="value(s) mapped to 255: one, or one per band")
    if band_file:
        parser.add_argument("--band-file", default=None,
                            help=f"{BAND_FILE_NAME} written by tools/prepare_scene_tiles.py")


def band_selection_from_args(args: argparse.Namespace) -> Optional[BandSelection]:
    """The selection of :func:`add_band_arguments` options (None: the 8-bit default)."""
    explicit = (args.bands, args.band_low, args.band_high)
    if getattr(args, "band_file", None) is not None:
        if any(v is not None for v in explicit):
            raise ValueError("give either --band-file or --bands/--band-low/--band-high, not both")
        return read_band_file(args.band_file)
    if all(v is None for v in explicit):
        return None
    if any(v is None for v in explicit):
        raise ValueError("--bands, --band-low and --band-high go together")
    return BandSelection.create(bands=args.bands, low=args.band_low, high=args.band_high)

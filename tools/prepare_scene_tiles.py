#!/usr/bin/env python3
"""Cut training tiles from a scene (GeoTIFF or any GDAL raster) with an explicit band selection.

Writes ``<output>/images/<stem>_<row>_<col>.png`` and, with --labels (a uint8 class-id raster of
the scene's size), ``<output>/masks/<same name>`` with nodata as 255: the folder dataset layout of
configs/folder. The bands and value range are those of tools/segment_scenes.py (same options, same
code) and are saved as ``<output>/band_selection.json``: segment with ``--band-file`` on it so that
training and inference see the same pixels. See docs/large_scenes.md.

Example:
    python tools/prepare_scene_tiles.py scene.tif --labels scene_labels.tif --output tiles \
        --tile-size 512 --bands 3 2 1 --band-low 0 --band-high 3000
"""
import argparse
import logging
import sys
from typing import Optional, Sequence

from dinov3_m2f.scenes.bands import add_band_arguments, band_selection_from_args
from dinov3_m2f.scenes.tiles import cut_scene_tiles


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", help="the scene raster")
    parser.add_argument("--labels", default=None, help="uint8 class-id raster of the same size")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--tile-size", type=int, default=512, help="tile side in pixels")
    add_band_arguments(parser, band_file=False)
    parser.add_argument("--max-nodata-fraction", type=float, default=0.5,
                        help="skip tiles with more nodata than this")
    args = parser.parse_args(argv)
    selection = band_selection_from_args(args)
    written = cut_scene_tiles(args.scene, args.output, tile_size=args.tile_size, selection=selection,
                              labels_path=args.labels, max_nodata_fraction=args.max_nodata_fraction)
    print(f"{len(written)} tiles written to {args.output}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())

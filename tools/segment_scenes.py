#!/usr/bin/env python3
"""Segment large scenes (GeoTIFFs, any GDAL raster, or plain images) block by block.

Sliding-window inference whose memory depends on the window, the classes and --block-size, not
on the scene size (dinov3_m2f.modeling.blockwise). For each input ``<stem>.<ext>`` the output
folder gets ``<stem>_labels.tif`` (GeoTIFF with the input's CRS and transform, uint8 class ids,
255 at nodata, colour table, class names) or ``<stem>_labels.png`` for a plain image, and
optionally ``<stem>_confidence.tif|png`` and a downsampled ``<stem>_overlay.png``. Details, the
band selection and restarts: docs/large_scenes.md.

Scenes are split across --num-gpus processes (or the processes of torchrun); a scene whose labels
exist is skipped, so a restarted job continues. A scene that fails is reported and skipped; the
exit code is 1 when any scene failed.

Example:
    python tools/segment_scenes.py --config-file configs/loveda/m2f_vitl16_sat493m_512.py \
        --checkpoint model_final.pth --output out --bands 3 2 1 --band-low 0 --band-high 3000 \
        scenes/ --opts model.backbone.weights=checkpoints/vitl16_sat493m.pth
"""
import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import dinov3_m2f.d2  # noqa: F401  before detectron2: imports it without its import-time warnings
from detectron2.utils import comm

from dinov3_m2f.d2.launch import launch, process_group_backend
from dinov3_m2f.d2.predictor import SemSegPredictor
from dinov3_m2f.d2.trainer import resolve_device
from dinov3_m2f.data.files import INPUT_IMAGE_SUFFIXES, collect_image_files
from dinov3_m2f.modeling.blockwise import DEFAULT_BLOCK_SIZE
from dinov3_m2f.scenes.bands import add_band_arguments, band_selection_from_args
from dinov3_m2f.scenes.jobs import run_scenes
from dinov3_m2f.scenes.readers import is_plain_image, open_scene
from dinov3_m2f.scenes.segment import SlideSettings, scene_outputs, segment_scene

logger = logging.getLogger("segment_scenes")

# Raster formats listed from input folders, besides the image suffixes of tools/demo.py.
SCENE_SUFFIXES = (*INPUT_IMAGE_SUFFIXES, ".vrt", ".jp2", ".img")
# Overlay side used by --overlay.
DEFAULT_OVERLAY_MAX_SIZE = 2048
# GDAL's tile cache in MiB, unless GDAL_CACHEMAX is set: its default (5 % of the RAM) would keep
# read and written tiles far beyond what block-wise inference needs.
DEFAULT_GDAL_CACHE_MIB = "256"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="scene files, folders or glob patterns")
    parser.add_argument("--config-file", required=True, help="LazyConfig file of the model")
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pth) or .safetensors")
    parser.add_argument("--output", required=True, help="output folder (created if needed)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (one GPU per process)")
    parser.add_argument("--autocast", default="auto", choices=["auto", "none", "bfloat16", "float16"])
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="window size (default: the config's model.slide_crop_size)")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="window stride (default: the config's model.slide_stride)")
    parser.add_argument("--slide-batch", type=int, default=None,
                        help="windows per forward pass (default: the config's model.slide_batch)")
    parser.add_argument("--block-size", type=int, nargs=2, metavar=("H", "W"),
                        default=list(DEFAULT_BLOCK_SIZE), help="output block (memory: C x H x W x 4 bytes "
                        "per open block)")
    add_band_arguments(parser)
    parser.add_argument("--confidence", action="store_true", help="also write the confidence raster")
    parser.add_argument("--overviews", action="store_true", help="add GeoTIFF overviews")
    parser.add_argument("--overlay", action="store_true", help="also draw a downsampled overlay")
    parser.add_argument("--overlay-max-size", type=int, default=DEFAULT_OVERLAY_MAX_SIZE,
                        help="longer side of the overlay in pixels")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes (one per GPU; on CPU, processes sharing the cores)")
    parser.add_argument("--dist-url", default="auto", help="rendezvous URL of the --num-gpus processes (auto: a free local port)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides key=value (last option)")
    return parser.parse_args(argv)


def slide_settings(args: argparse.Namespace, model) -> SlideSettings:
    """Windows from the command line, else from the model's config."""
    crop = args.crop_size or model.slide_crop_size
    stride = args.stride or model.slide_stride
    if crop is None or stride is None:
        raise ValueError("the config has no model.slide_crop_size/slide_stride: give --crop-size and --stride")
    return SlideSettings(crop_size=tuple(crop), stride=tuple(stride), block_size=tuple(args.block_size),
                         slide_batch=args.slide_batch or model.slide_batch)


def worker(args: argparse.Namespace) -> None:
    """Segment this process's share of the scenes."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    selection = band_selection_from_args(args)
    files = collect_image_files(args.inputs, suffixes=SCENE_SUFFIXES)
    rank, world_size = comm.get_rank(), comm.get_world_size()
    device = str(resolve_device(args.device))  # "cuda": the GPU of this process' local rank
    predictor = SemSegPredictor.from_config(args.config_file, checkpoint=args.checkpoint,
                                            overrides=args.opts, device=device, autocast=args.autocast)
    if len(predictor.augmentations.augs):
        logger.warning("scenes are segmented at their native resolution; the config's test-time "
                       "resize (dataloader.test.mapper.augmentations) is not applied")
    settings = slide_settings(args, predictor.model)
    colors = predictor.metadata.get("stuff_colors")

    def segment_one(path: str) -> None:
        scene = open_scene(path, selection=None if is_plain_image(path) else selection)
        try:
            segment_scene(predictor.predict_crops, scene, output_dir=args.output,
                          num_classes=len(predictor.class_names), settings=settings,
                          class_names=predictor.class_names, colors=colors, confidence=args.confidence,
                          overviews=args.overviews,
                          overlay_max_size=args.overlay_max_size if args.overlay else 0,
                          device=predictor.device)
        finally:
            scene.close()

    run_scenes(files, segment_one, output_dir=args.output, rank=rank, world_size=world_size)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns the exit code: 1 when a scene has no labels at the end (after
    every process has finished)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    os.environ.setdefault("GDAL_CACHEMAX", DEFAULT_GDAL_CACHE_MIB)  # read by GDAL at its first use
    # --num-gpus processes, or this process joins those of torchrun / srun (dinov3_m2f.d2.launch)
    launch(worker, (args,), num_processes=args.num_gpus, dist_url=args.dist_url,
           backend=process_group_backend(args.device))
    # every process has finished its share (the launcher waits for all): check every scene
    files = collect_image_files(args.inputs, suffixes=SCENE_SUFFIXES)
    missing = [f for f in files if not os.path.exists(scene_outputs(f, args.output).labels)]
    if missing:
        logger.error("%d of %d scene(s) have no labels (see the errors above): %s", len(missing),
                     len(files), ", ".join(missing))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

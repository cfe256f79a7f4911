"""Peak memory of block-wise scene segmentation as the scene grows (docs/benchmarks.md).

For every size, a GeoTIFF scene (3 bands, uint8, tiled and compressed, a smooth pattern) is
written block by block into --work-dir, then a fresh process builds the model of --config-file
(random weights: the memory does not depend on them), segments the scene with
dinov3_m2f.scenes.segment_scene into a GeoTIFF and prints one JSON line: the scene size, window
runs, seconds, and its peak resident memory (ru_maxrss). A flat peak RSS across sizes means the
memory is bounded by the window, the classes and the block size, not by the scene.

Example:
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python dev/benchmark.py scene \
        --sizes 2048 4096 8192 16384 --work-dir /tmp/scenes
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np

DEV = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(DEV)
# dev/benchmark.py, which starts the measured children (``scene --run-one SCENE``).
ENTRY_POINT = os.path.join(DEV, "benchmark.py")
DEFAULT_CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
PATTERN_PERIOD = 97.0  # pixels per cycle of the synthetic pattern
WRITE_ROWS = 1024  # scene rows written at a time
KIB = 1024


def write_scene(path: str, size: int) -> None:
    """A size x size uint8 3-band GeoTIFF, written by strips of rows (bounded memory)."""
    import rasterio

    cols = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3, dtype="uint8",
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate") as dst:
        for top in range(0, size, WRITE_ROWS):
            rows = np.arange(top, min(top + WRITE_ROWS, size), dtype=np.float32)[:, None]
            strip = np.stack([127 + 120 * np.sin((rows * (b + 1) + cols) / PATTERN_PERIOD) for b in range(3)])
            window = rasterio.windows.Window(0, top, size, strip.shape[1])
            dst.write(strip.astype(np.uint8), window=window)


def run_one(args: argparse.Namespace) -> None:
    """Segment one scene in this process and print its JSON line."""
    import torch
    from detectron2.config import instantiate

    from dinov3_m2f.d2.config import load_config
    from dinov3_m2f.scenes.readers import open_scene
    from dinov3_m2f.scenes.segment import SlideSettings, segment_scene

    cfg = load_config(args.config_file, overrides=args.opts)
    model = instantiate(cfg.model).eval()
    settings = SlideSettings(crop_size=tuple(args.crop_size), stride=tuple(args.stride),
                             block_size=tuple(args.block_size), slide_batch=args.slide_batch)

    def predict(crops):
        with torch.inference_mode():
            return model.predict_crops(crops)

    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB
    scene = open_scene(args.run_one)
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    segment_scene(predict, scene, output_dir=args.output, num_classes=model.num_classes,
                  settings=settings, progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "size": scene.height, "classes": model.num_classes, "crop": args.crop_size,
        "stride": args.stride, "block": args.block_size, "seconds": round(seconds, 1),
        "peak_rss_mib_after_model": round(rss_model), "peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB),
        "in_memory_scores_mib": round(model.num_classes * scene.height * scene.width * 4 / KIB**2),
    }), flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dev/benchmark.py scene", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--work-dir", required=True, help="scenes and outputs go here")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--crop-size", type=int, nargs=2, default=[512, 512])
    parser.add_argument("--stride", type=int, nargs=2, default=[512, 512])
    parser.add_argument("--block-size", type=int, nargs=2, default=[2048, 2048])
    parser.add_argument("--slide-batch", type=int, default=1)
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = parser.parse_args(argv)
    if args.run_one:
        run_one(args)
        return 0
    os.makedirs(args.work_dir, exist_ok=True)
    for size in args.sizes:
        path = os.path.join(args.work_dir, f"scene_{size}.tif")
        if not os.path.exists(path):
            write_scene(path, size)
        command = [sys.executable, ENTRY_POINT, "scene", "--run-one", path, "--work-dir", args.work_dir,
                   "--output", os.path.join(args.work_dir, "out"),
                   "--config-file", args.config_file, "--crop-size", *map(str, args.crop_size),
                   "--stride", *map(str, args.stride), "--block-size", *map(str, args.block_size),
                   "--slide-batch", str(args.slide_batch), "--opts", *args.opts]
        subprocess.run(command, check=True)
    return 0

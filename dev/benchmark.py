#!/usr/bin/env python3
"""The measurements of docs/benchmarks.md, one entry point: ``python dev/benchmark.py MODE ...``.

Modes (one module each in dev/benchmarks/; ``python dev/benchmark.py MODE --help`` for its options):
  config    a LazyConfig's model through detectron2's trainer: train ms/iter, inference images/s,
            peak memory
  head      the core model without detectron2 (frozen ViT + adapter + Mask2Former head in the
            configs' shapes, or the tiny model): train step and whole-image inference
  backbone  the DINOv3 ViT forward: ours vs transformers' DINOv3ViTModel
  ops       the MSDeformAttn op: compiled vs the grid_sample reference (vs the original kernel)
  compile   eager vs torch.compile of the core model
  official  inference of ours vs the official DINOv3 segmentor on the same weights
  memory    CPU peak memory of loading a ViT checkpoint, sliding-window inference, a training step
  scene     peak memory of block-wise GeoTIFF segmentation as the scene grows

Contenders (implementations, eager and compiled, ours and theirs) take turns call by call in one
process; every row names the date, the machine with its load average, and the torch version.
Random weights and inputs throughout: no checkpoint or dataset is needed.
"""
import importlib
import os
import sys
from typing import Optional, Sequence

# The modes are the package dev/benchmarks/, beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("config", "head", "backbone", "ops", "compile", "official", "memory", "scene")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``MODE`` with the rest of ``argv``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in MODES:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            return 0
        given = f"got {argv[0]!r}" if argv else "none given"
        print(f"usage: dev/benchmark.py {{{','.join(MODES)}}} ...: a mode first ({given})\n\n{__doc__}",
              file=sys.stderr)
        return 2
    return importlib.import_module(f"benchmarks.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

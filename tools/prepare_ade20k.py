#!/usr/bin/env python3
"""Prepare ADE20K (SceneParsing, ADEChallengeData2016) label masks for Detectron2.

Reads ``ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = unlabelled, 1..150 =
classes) and writes ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png``
with class ids 0..149 and 255 = ignore, the layout ``ade20k_sem_seg_{train,val}`` expects.
Existing outputs are kept unless ``--overwrite``; files are written atomically, so an interrupted
run can simply be started again.

Example:
    python tools/prepare_ade20k.py --root datasets/ADEChallengeData2016
"""
import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from dinov3_m2f.data.files import datasets_root
from dinov3_m2f.data.masks import convert_label_pngs, shifted_label_map

logger = logging.getLogger("prepare_ade20k")

NUM_CLASSES = 150
# Raw value 0 (unlabelled) -> ignore; classes 1..150 -> 0..149.
ADE20K_LABEL_MAP = shifted_label_map(NUM_CLASSES)
SPLITS = ("training", "validation")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.path.join(datasets_root(), "ADEChallengeData2016")
    parser.add_argument("--root", default=default_root, help=f"ADEChallengeData2016 directory (default {default_root})")
    parser.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    return parser.parse_args(argv)


def prepare(root: str, *, overwrite: bool = False) -> int:
    """Convert both splits under ``root``.

    Args:
        root: the ADEChallengeData2016 directory.
        overwrite: rewrite existing outputs.

    Returns:
        Number of files written.
    """
    written = 0
    for split in SPLITS:
        src_dir = os.path.join(root, "annotations", split)
        dst_dir = os.path.join(root, "annotations_detectron2", split)
        if not os.path.isdir(src_dir):
            raise FileNotFoundError(f"annotation directory {src_dir} does not exist (expected {root}/annotations/{{{','.join(SPLITS)}}})")
        names = sorted(n for n in os.listdir(src_dir) if n.lower().endswith(".png"))
        if not names:
            raise FileNotFoundError(f"no .png annotations in {src_dir}")
        os.makedirs(dst_dir, exist_ok=True)
        jobs = [(os.path.join(src_dir, name), os.path.join(dst_dir, name)) for name in names]
        split_written, kept = convert_label_pngs(jobs, label_map=ADE20K_LABEL_MAP, overwrite=overwrite)
        written += split_written
        logger.info("%s: %d annotations -> %s (%d already there, kept)", split, len(names), dst_dir, kept)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    written = prepare(args.root, overwrite=args.overwrite)
    logger.info("Wrote %d files", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())

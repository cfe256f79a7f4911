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

from dinov3_m2f.data.io import convert_label_png

logger = logging.getLogger("prepare_ade20k")

NUM_CLASSES = 150
IGNORE_LABEL = 255
# Raw value 0 (unlabelled) -> ignore; classes 1..150 -> 0..149.
ADE20K_LABEL_MAP = {0: IGNORE_LABEL, **{raw: raw - 1 for raw in range(1, NUM_CLASSES + 1)}}
SPLITS = ("training", "validation")
# Log progress every this many files.
PROGRESS_EVERY = 1000


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.path.join(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")),
                                "ADEChallengeData2016")
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
        skipped = 0
        for i, name in enumerate(names):
            dst = os.path.join(dst_dir, name)
            if os.path.exists(dst) and not overwrite:
                skipped += 1
            else:
                convert_label_png(os.path.join(src_dir, name), dst, label_map=ADE20K_LABEL_MAP)
                written += 1
            if (i + 1) % PROGRESS_EVERY == 0:
                logger.info("%s: %d/%d", split, i + 1, len(names))
        logger.info("%s: %d annotations -> %s (%d already there, kept)", split, len(names), dst_dir, skipped)
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

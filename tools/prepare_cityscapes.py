#!/usr/bin/env python3
"""Prepare Cityscapes fine label masks for Detectron2: ``*_gtFine_labelIds.png`` -> ``*_labelTrainIds.png``.

Reads ``cityscapes/gtFine/<split>/<city>/*_gtFine_labelIds.png`` (the 34 Cityscapes label ids) and
writes ``*_gtFine_labelTrainIds.png`` next to each file: the 19 evaluated classes as train ids
0..18 and everything else as 255 (ignore), the layout ``cityscapes_fine_sem_seg_{train,val}``
expects. Equivalent to cityscapesScripts' ``createTrainIdLabelImgs.py`` without needing that
package (the train ids are detectron2's ``CITYSCAPES_CATEGORIES``). Existing outputs are kept
unless ``--overwrite``; files are written atomically.

Example:
    python tools/prepare_cityscapes.py --root datasets/cityscapes
"""
import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import dinov3_m2f.d2  # noqa: F401  before detectron2: imports it without its import-time warnings
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

from dinov3_m2f.data.files import datasets_root, list_files
from dinov3_m2f.data.masks import IGNORE_VALUE, convert_label_pngs

logger = logging.getLogger("prepare_cityscapes")

# Cityscapes label ids are 0..33 ("license plate", -1, is never drawn in labelIds images). The
# 19 evaluated classes and their train ids are detectron2's CITYSCAPES_CATEGORIES (taken from
# cityscapesScripts' labels table); every other label id is ignored.
NUM_LABEL_IDS = 34
_TRAIN_IDS = {category["id"]: category["trainId"] for category in CITYSCAPES_CATEGORIES}
CITYSCAPES_ID_TO_TRAIN_ID = {i: _TRAIN_IDS.get(i, IGNORE_VALUE) for i in range(NUM_LABEL_IDS)}
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
DEFAULT_SPLITS = ("train", "val")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.path.join(datasets_root(), "cityscapes")
    parser.add_argument("--root", default=default_root, help=f"cityscapes directory (default {default_root})")
    parser.add_argument(
        "--splits", nargs="+", default=list(DEFAULT_SPLITS), help="gtFine splits to convert (default: train val)"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    return parser.parse_args(argv)


def prepare(root: str, *, splits: Sequence[str] = DEFAULT_SPLITS, overwrite: bool = False) -> int:
    """Convert the given splits under ``root/gtFine``.

    Args:
        root: the cityscapes directory.
        splits: gtFine splits.
        overwrite: rewrite existing outputs.

    Returns:
        Number of files written.
    """
    written = 0
    for split in splits:
        split_dir = os.path.join(root, "gtFine", split)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f"label directory {split_dir} does not exist (expected {root}/gtFine/<split>/<city>)")
        sources, _ = list_files(split_dir, (LABEL_IDS_SUFFIX,))
        if not sources:
            raise FileNotFoundError(f"no *{LABEL_IDS_SUFFIX} files under {split_dir}")
        jobs = [(src, os.path.join(split_dir, key + TRAIN_IDS_SUFFIX)) for key, src in sources.items()]
        split_written, kept = convert_label_pngs(jobs, label_map=CITYSCAPES_ID_TO_TRAIN_ID, overwrite=overwrite)
        written += split_written
        logger.info("%s: %d label files in %s (%d already converted, kept)", split, len(jobs), split_dir, kept)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    written = prepare(args.root, splits=args.splits, overwrite=args.overwrite)
    logger.info("Wrote %d files", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())

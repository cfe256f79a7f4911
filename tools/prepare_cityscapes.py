#!/usr/bin/env python3
"""Prepare Cityscapes fine label masks for Detectron2: ``*_gtFine_labelIds.png`` -> ``*_labelTrainIds.png``.

Reads ``cityscapes/gtFine/<split>/<city>/*_gtFine_labelIds.png`` (the 34 Cityscapes label ids) and
writes ``*_gtFine_labelTrainIds.png`` next to each file: the 19 evaluated classes as train ids
0..18 and everything else as 255 (ignore), the layout ``cityscapes_fine_sem_seg_{train,val}``
expects. Equivalent to cityscapesScripts' ``createTrainIdLabelImgs.py`` without needing that
package. Existing outputs are kept unless ``--overwrite``; files are written atomically.

Example:
    python tools/prepare_cityscapes.py --root datasets/cityscapes
"""
import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from dinov3_m2f.data.files import datasets_root, list_files
from dinov3_m2f.data.io import IGNORE_VALUE, convert_label_pngs

logger = logging.getLogger("prepare_cityscapes")

# Label id -> train id of the 34 Cityscapes labels (ids 0..33), from the `labels` table of the
# official cityscapesScripts (cityscapesscripts/helpers/labels.py). Ids whose label is not
# evaluated map to 255; "license plate" (id -1) is never drawn in labelIds images.
CITYSCAPES_ID_TO_TRAIN_ID = {
    0: IGNORE_VALUE,   # unlabeled
    1: IGNORE_VALUE,   # ego vehicle
    2: IGNORE_VALUE,   # rectification border
    3: IGNORE_VALUE,   # out of roi
    4: IGNORE_VALUE,   # static
    5: IGNORE_VALUE,   # dynamic
    6: IGNORE_VALUE,   # ground
    7: 0,              # road
    8: 1,              # sidewalk
    9: IGNORE_VALUE,   # parking
    10: IGNORE_VALUE,  # rail track
    11: 2,             # building
    12: 3,             # wall
    13: 4,             # fence
    14: IGNORE_VALUE,  # guard rail
    15: IGNORE_VALUE,  # bridge
    16: IGNORE_VALUE,  # tunnel
    17: 5,             # pole
    18: IGNORE_VALUE,  # polegroup
    19: 6,             # traffic light
    20: 7,             # traffic sign
    21: 8,             # vegetation
    22: 9,             # terrain
    23: 10,            # sky
    24: 11,            # person
    25: 12,            # rider
    26: 13,            # car
    27: 14,            # truck
    28: 15,            # bus
    29: IGNORE_VALUE,  # caravan
    30: IGNORE_VALUE,  # trailer
    31: 16,            # train
    32: 17,            # motorcycle
    33: 18,            # bicycle
}  # fmt: skip
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

#!/usr/bin/env python3
"""Check a semantic segmentation dataset and print its per-class pixel histogram.

Reads every image and mask with the readers training uses (so a 16-bit, palette, CMYK or
EXIF-rotated image is seen as training sees it) and reports unreadable or refused images,
unreadable and RGB/RGBA masks, masks whose size fits neither the displayed nor the stored
(pre-EXIF) size of their image, and label values other than ``0..num_classes-1`` and the ignore
value (after the dataset's label map, e.g. LoveDA's raw 1..7 -> 0..6). It also lists every image
with an EXIF orientation and whether its mask matched the stored or the displayed size (see
``dinov3_m2f.data.image`` for the policy). Exits with 1 when anything is wrong, 2 when the
dataset cannot be found, 0 otherwise.

``--visualize N`` writes N image-and-mask overlays (class colours, region boundaries and a legend
with the class names) into ``--visualize-dir``: EXIF-rotated images first, then images spread over
the dataset. Alignment faults are the ones no number shows.

Two modes:

* ``--dataset NAME``: a registered dataset (the standard ones under ``$DETECTRON2_DATASETS`` are
  registered automatically); class names, colours, ignore value and label map come from its
  metadata. Needs detectron2.
* ``--image-dir DIR --mask-dir DIR --num-classes N``: a folder dataset (``<name>.jpg|png`` images,
  ``<name>.png`` masks with class ids); no detectron2 needed.

Examples:
    python tools/check_dataset.py --dataset loveda_sem_seg_train --visualize 20
    python tools/check_dataset.py --image-dir data/images --mask-dir data/masks --num-classes 5
"""
import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from dinov3_m2f.data.checks import DatasetReport, Problem, check_dataset, format_histogram, pair_files
from dinov3_m2f.data.masks import IGNORE_VALUE, read_image_and_mask
from dinov3_m2f.data.visualize import class_colors, draw_overlay

logger = logging.getLogger("check_dataset")

# Problems and notes printed in full; the rest are counted.
DEFAULT_MAX_LISTED = 50
DEFAULT_VISUALIZE_DIR = "check_dataset_overlays"
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_NOT_FOUND = 2


@dataclass
class DatasetSource:
    """What to check: dataset dicts, their settings, and how to name and colour classes."""

    description: str
    dicts: List[Dict]
    num_classes: int
    ignore_value: int
    label_map: Optional[Mapping[int, int]]
    class_names: Optional[List[str]]
    colors: Optional[List]
    pairing_problems: List[Problem] = field(default_factory=list)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="registered dataset name (e.g. ade20k_sem_seg_val)")
    parser.add_argument("--image-dir", help="folder mode: image directory (searched recursively)")
    parser.add_argument("--mask-dir", help="folder mode: mask directory (same names, .png)")
    parser.add_argument("--num-classes", type=int, help="folder mode: number of classes")
    parser.add_argument(
        "--ignore-value", type=int, default=IGNORE_VALUE, help=f"folder mode: ignore label (default {IGNORE_VALUE})"
    )
    parser.add_argument("--class-names", help="folder mode: comma-separated class names for the table")
    parser.add_argument(
        "--max-listed", type=int, default=DEFAULT_MAX_LISTED, help="problems and notes printed in full (default 50)"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="reading threads (default: Python's choice)")
    parser.add_argument("--visualize", type=int, default=0, metavar="N", help="write N image-and-mask overlays")
    parser.add_argument(
        "--visualize-dir", default=DEFAULT_VISUALIZE_DIR, help=f"folder of the overlays (default {DEFAULT_VISUALIZE_DIR})"
    )
    args = parser.parse_args(argv)
    folder_args = (args.image_dir, args.mask_dir, args.num_classes)
    if args.dataset is not None:
        if any(a is not None for a in (*folder_args, args.class_names)):
            parser.error("--dataset cannot be combined with --image-dir/--mask-dir/--num-classes/--class-names")
    elif any(a is None for a in folder_args):
        parser.error("give --dataset NAME, or --image-dir, --mask-dir and --num-classes")
    if args.visualize < 0:
        parser.error(f"--visualize must be >= 0, got {args.visualize}")
    return args


def registered_dataset(name: str) -> DatasetSource:
    """The dataset dicts and metadata of a registered dataset (imports detectron2)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

    import dinov3_m2f.d2  # noqa: F401  (registers LoveDA and the synthetic set, like detectron2's)

    if name not in DatasetCatalog.list():
        raise FileNotFoundError(f"dataset {name!r} is not registered")
    dicts = get_detection_dataset_dicts(name)
    metadata = MetadataCatalog.get(name)
    classes = list(metadata.stuff_classes)
    return DatasetSource(
        description=f"dataset {name}",
        dicts=dicts,
        num_classes=len(classes),
        ignore_value=metadata.get("ignore_label", IGNORE_VALUE),
        label_map=metadata.get("label_map"),
        class_names=classes,
        colors=metadata.get("stuff_colors"),
    )


def folder_dataset(args: argparse.Namespace) -> DatasetSource:
    """The image/mask pairs of ``--image-dir`` and ``--mask-dir``."""
    dicts, pairing_problems = pair_files(args.image_dir, args.mask_dir)
    return DatasetSource(
        description=f"{args.image_dir} + {args.mask_dir}",
        dicts=dicts,
        num_classes=args.num_classes,
        ignore_value=args.ignore_value,
        label_map=None,
        class_names=args.class_names.split(",") if args.class_names else None,
        colors=None,
        pairing_problems=pairing_problems,
    )


def overlay_samples(dicts: Sequence[Mapping], report: DatasetReport, count: int) -> List[Mapping]:
    """Up to ``count`` labelled samples without problems: EXIF-rotated images first, then
    samples spread evenly over the rest of the dataset."""
    bad = {problem.path for problem in report.problems}
    usable = [
        d for d in dicts
        if "sem_seg_file_name" in d and d["file_name"] not in bad and d["sem_seg_file_name"] not in bad
    ]
    rotated = set(report.exif_rotated)
    first = [d for d in usable if d["file_name"] in rotated][:count]
    rest = [d for d in usable if d["file_name"] not in rotated]
    wanted = min(count - len(first), len(rest))
    spread = np.unique(np.linspace(0, len(rest) - 1, wanted).round().astype(int)) if wanted > 0 else []
    return first + [rest[i] for i in spread]


def write_overlays(source: DatasetSource, report: DatasetReport, *, count: int, folder: str) -> List[str]:
    """Draw ``count`` samples (as training reads them) into ``folder``; returns the files written."""
    names = source.class_names or [str(c) for c in range(source.num_classes)]
    colors = source.colors or class_colors(source.num_classes)
    os.makedirs(folder, exist_ok=True)
    written = []
    for i, record in enumerate(overlay_samples(source.dicts, report, count)):
        image, labels = read_image_and_mask(
            record["file_name"], record["sem_seg_file_name"], label_map=source.label_map,
            ignore_value=source.ignore_value,
        )
        overlay = draw_overlay(image, labels, class_names=names, colors=colors, ignore_value=source.ignore_value)
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(folder, f"{i:04d}_{stem}.png")
        Image.fromarray(overlay).save(path)
        written.append(path)
    return written


def _print_listing(title: str, findings: Sequence[Problem], max_listed: int) -> None:
    print(f"\n{title}:")
    for finding in findings[:max_listed]:
        print(f"  {finding.message}")
    if len(findings) > max_listed:
        print(f"  ... and {len(findings) - max_listed} more")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        source = registered_dataset(args.dataset) if args.dataset is not None else folder_dataset(args)
    except FileNotFoundError as e:
        print(f"check_dataset: error: {e}", file=sys.stderr)
        return EXIT_NOT_FOUND
    logger.info("Checking %d images of %s (%d classes)", len(source.dicts), source.description, source.num_classes)
    report = check_dataset(
        source.dicts, num_classes=source.num_classes, ignore_value=source.ignore_value,
        label_map=source.label_map, num_workers=args.num_workers,
    )
    report.problems[:0] = source.pairing_problems

    print(
        f"{source.description}: {report.num_images} images, {report.num_masks} masks, "
        f"{len(report.problems)} problems, {len(report.exif_rotated)} images with an EXIF orientation"
    )
    print(format_histogram(report, class_names=source.class_names))
    empty = [i for i, n in enumerate(report.pixels) if n == 0]
    if empty and report.num_masks:
        print(f"classes without any pixel: {empty}")
    if report.notes:
        _print_listing("Notes (not errors; the EXIF policy is in dinov3_m2f/data/image.py)", report.notes,
                       args.max_listed)
    if args.visualize:
        written = write_overlays(source, report, count=args.visualize, folder=args.visualize_dir)
        print(f"\nWrote {len(written)} overlays to {args.visualize_dir}")
    if report.ok:
        return EXIT_OK
    _print_listing("Problems", report.problems, args.max_listed)
    return EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())

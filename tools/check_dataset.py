#!/usr/bin/env python3
"""Check a semantic segmentation dataset and print its per-class pixel histogram.

Reports unreadable images/masks, RGB/RGBA masks, image/mask size mismatches and label values other
than ``0..num_classes-1`` and the ignore value (after the dataset's label map, e.g. LoveDA's raw
1..7 -> 0..6). Exits with 1 when anything is wrong, 0 otherwise.

Two modes:

* ``--dataset NAME``: a registered dataset (the standard ones under ``$DETECTRON2_DATASETS`` are
  registered automatically); class names, ignore value and label map come from its metadata.
  Needs detectron2.
* ``--image-dir DIR --mask-dir DIR --num-classes N``: a folder dataset (``<name>.jpg|png`` images,
  ``<name>.png`` masks with class ids); no detectron2 needed.

Examples:
    python tools/check_dataset.py --dataset loveda_sem_seg_train
    python tools/check_dataset.py --image-dir data/images --mask-dir data/masks --num-classes 5
"""
import argparse
import logging
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from dinov3_m2f.data.checks import Problem, check_dataset, format_histogram, pair_files
from dinov3_m2f.data.io import IGNORE_VALUE

logger = logging.getLogger("check_dataset")

# Problems printed in full; the rest are counted.
DEFAULT_MAX_LISTED = 50
EXIT_OK = 0
EXIT_PROBLEMS = 1


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
        "--max-listed", type=int, default=DEFAULT_MAX_LISTED, help="problems printed in full (default 50)"
    )
    args = parser.parse_args(argv)
    folder_args = (args.image_dir, args.mask_dir, args.num_classes)
    if args.dataset is not None:
        if any(a is not None for a in (*folder_args, args.class_names)):
            parser.error("--dataset cannot be combined with --image-dir/--mask-dir/--num-classes/--class-names")
    elif any(a is None for a in folder_args):
        parser.error("give --dataset NAME, or --image-dir, --mask-dir and --num-classes")
    return args


def registered_dataset(name: str) -> Tuple[List[Dict], Dict, List[str]]:
    """Dataset dicts, :func:`check_dataset` settings and class names of a registered dataset
    (imports detectron2)."""
    from detectron2.data import MetadataCatalog, get_detection_dataset_dicts

    import dinov3_m2f.d2  # noqa: F401  (registers LoveDA and the synthetic set, like detectron2's)

    dicts = get_detection_dataset_dicts(name)
    metadata = MetadataCatalog.get(name)
    classes = list(metadata.stuff_classes)
    settings = dict(
        num_classes=len(classes),
        ignore_value=metadata.get("ignore_label", IGNORE_VALUE),
        label_map=metadata.get("label_map"),
    )
    return dicts, settings, classes


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pairing_problems: List[Problem] = []
    if args.dataset is not None:
        dicts, settings, class_names = registered_dataset(args.dataset)
        source = f"dataset {args.dataset}"
    else:
        dicts, pairing_problems = pair_files(args.image_dir, args.mask_dir)
        class_names = args.class_names.split(",") if args.class_names else None
        settings = dict(num_classes=args.num_classes, ignore_value=args.ignore_value)
        source = f"{args.image_dir} + {args.mask_dir}"
    logger.info("Checking %d images of %s (%d classes)", len(dicts), source, settings["num_classes"])
    report = check_dataset(dicts, **settings)
    report.problems[:0] = pairing_problems

    print(f"{source}: {report.num_images} images, {report.num_masks} masks, {len(report.problems)} problems")
    print(format_histogram(report, class_names=class_names))
    empty = [i for i, n in enumerate(report.pixels) if n == 0]
    if empty and report.num_masks:
        print(f"classes without any pixel: {empty}")
    if report.ok:
        return EXIT_OK
    print("\nProblems:")
    for problem in report.problems[: args.max_listed]:
        print(f"  {problem.message}")
    if len(report.problems) > args.max_listed:
        print(f"  ... and {len(report.problems) - args.max_listed} more")
    return EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())

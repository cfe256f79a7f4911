#!/usr/bin/env python3
"""Segment image files with a trained model: a colored overlay and a raw label PNG per image.

Inputs are image files, folders (their images, sorted, not recursive) or glob patterns. For each
input ``<stem>.<ext>`` the output folder gets:
    <stem>_overlay.png   the image with the predicted classes drawn over it and a legend of the
                         classes present on the right (names and colors from the test dataset's
                         metadata; drawn by dinov3_m2f.data.visualize.draw_overlay)
    <stem>_labels.png    uint8 class ids, one channel, same size as the image

An image that cannot be read is skipped with a warning naming it; the exit code is 0 when at least
one image was segmented (the skipped files are listed at the end), 1 when none was.

Examples:
    python tools/demo.py --config-file configs/synthetic/m2f_tiny_synthetic.py \
        --checkpoint output/m2f_tiny_synthetic/model_final.pth --output demo_out \
        datasets/dinov3_m2f_synthetic/val/images
    python tools/demo.py --config-file configs/loveda/m2f_vitl16_sat493m_512.py \
        --checkpoint model_final.pth --output out --test-mode tta --tta-scales 0.75 1.0 1.25 \
        --tta-flip "tiles/*.png" --opts model.backbone.weights=checkpoints/vitl16_sat493m.pth
"""
import argparse
import glob
import logging
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from dinov3_m2f.d2.predictor import SemSegPredictor
from dinov3_m2f.data.image import UnreadableImageError, read_image
from dinov3_m2f.data.visualize import class_colors, draw_overlay

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Label PNGs are uint8: class ids 0..254 (255 is the usual ignore value).
MAX_UINT8_CLASSES = 255
OVERLAY_SUFFIX = "_overlay.png"
LABELS_SUFFIX = "_labels.png"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--config-file", required=True, help="LazyConfig file of the model")
    parser.add_argument("--checkpoint", required=True,
                        help="trainable-only or full checkpoint (.pth) or .safetensors")
    parser.add_argument("--output", required=True, help="output folder (created if needed)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<i>")
    parser.add_argument("--autocast", default="auto",
                        choices=["auto", "none", "bfloat16", "float16"],
                        help="auto: the config's train.amp on CUDA, float32 on CPU")
    parser.add_argument("--test-mode", choices=["whole", "slide", "tta"], default=None,
                        help="default: the config's model.test_mode")
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="sliding-window size (slide, and tta with windows)")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="sliding-window stride")
    parser.add_argument("--tta-scales", type=float, nargs="+", default=None,
                        help="TTA resize ratios, e.g. 0.75 1.0 1.25")
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="add horizontally flipped TTA views")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides key=value (last option)")
    return parser.parse_args(argv)


def inference_overrides(args: argparse.Namespace) -> List[str]:
    """The ``model.*`` config overrides of the test-mode options that were given."""
    options = {
        "test_mode": args.test_mode, "slide_crop_size": args.crop_size,
        "slide_stride": args.stride, "tta_scales": args.tta_scales, "tta_flip": args.tta_flip,
    }
    return [f"model.{key}={value}" for key, value in options.items() if value is not None]


def collect_inputs(patterns: Sequence[str]) -> List[str]:
    """Expand files, folders and glob patterns into a list of files (order kept, no duplicates).

    Args:
        patterns: the command-line inputs.

    Returns:
        The files.
    """
    files: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [
                os.path.join(pattern, name)
                for name in sorted(os.listdir(pattern))
                if name.lower().endswith(IMAGE_SUFFIXES)
            ]
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        if not found:
            raise FileNotFoundError(f"input {pattern!r} matches no image file")
        files.extend(f for f in found if f not in files)
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(
            f"several inputs share the file name stem(s) {clashes}; their outputs would overwrite "
            "each other, run them separately"
        )
    return files


def save_outputs(
    image: np.ndarray, labels: np.ndarray, *, predictor: SemSegPredictor, stem: str,
    output: str, alpha: float,
) -> None:
    """Write ``<stem>_overlay.png`` and ``<stem>_labels.png`` into ``output``.

    Args:
        image: RGB uint8 [H, W, 3].
        labels: class ids [H, W].
        predictor: gives the metadata (class names and colors).
        stem: output name stem.
        output: output folder.
        alpha: overlay opacity.
    """
    names = predictor.class_names
    colors = predictor.metadata.get("stuff_colors") or class_colors(len(names))
    overlay = draw_overlay(image, labels, class_names=names, colors=colors, alpha=alpha)  # RGB
    Image.fromarray(overlay).save(os.path.join(output, stem + OVERLAY_SUFFIX))
    Image.fromarray(labels.astype(np.uint8)).save(os.path.join(output, stem + LABELS_SUFFIX))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    files = collect_inputs(args.inputs)
    predictor = SemSegPredictor.from_config(
        args.config_file,
        checkpoint=args.checkpoint,
        overrides=[*inference_overrides(args), *args.opts],
        device=args.device,
        autocast=args.autocast,
    )
    if len(predictor.class_names) > MAX_UINT8_CLASSES:
        raise ValueError(
            f"{len(predictor.class_names)} classes do not fit the uint8 label PNG "
            f"(at most {MAX_UINT8_CLASSES})"
        )
    os.makedirs(args.output, exist_ok=True)
    skipped: List[str] = []
    for path in tqdm(files, desc="demo", unit="image", disable=len(files) == 1):
        try:
            image = read_image(path)
        except UnreadableImageError as e:
            logger.warning("Skipping %s: %s", path, e)
            skipped.append(path)
            continue
        labels = predictor(image)
        stem = os.path.splitext(os.path.basename(path))[0]
        save_outputs(image, labels, predictor=predictor, stem=stem, output=args.output,
                     alpha=args.alpha)
    done = len(files) - len(skipped)
    logger.info("Segmented %d of %d images into %s", done, len(files), args.output)
    if skipped:
        logger.warning("Skipped %d unreadable file(s): %s", len(skipped), ", ".join(skipped))
    if done == 0:
        logger.error("No image could be read")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

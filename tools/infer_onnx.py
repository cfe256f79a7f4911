#!/usr/bin/env python3
"""Segment image files with an exported ONNX model on onnxruntime (CPU): no torch, no detectron2.

Writes the same files as ``tools/demo.py``, per input ``<stem>.<ext>``:
    <stem>_overlay.png   the image with the predicted classes drawn over it (class names and
                         colours from the model's metadata)
    <stem>_labels.png    uint8 class ids, one channel, same size as the image

Whole-image inference by default; ``--crop-size`` and ``--stride`` switch to sliding windows (the
Detectron2 model's ``test_mode="slide"``). A model exported without ``--dynamic`` takes only its
export size: whole images of that size, or windows of that size (``--crop-size`` = export size).
Images are read as the rest of the project reads them (``dinov3_m2f.data.image.read_image``: RGB,
EXIF orientation applied) and used at that size: resize them as the config's test mapper would,
if it resizes.

An image that cannot be read is skipped with a warning naming it; the exit code is 0 when at least
one image was segmented (the skipped files are listed at the end), 1 when none was.

Examples:
    python tools/infer_onnx.py --model model_final_128x128.onnx --output out images/
    python tools/infer_onnx.py --model loveda_dynamic.onnx --output out --crop-size 512 512 \
        --stride 341 341 "tiles/*.png"
"""
import argparse
import logging
import sys
from typing import Optional, Sequence

from dinov3_m2f.data.files import collect_image_files
from dinov3_m2f.data.outputs import segment_image_files
from dinov3_m2f.deploy.onnx_runner import OnnxSemSegmenter


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--model", required=True, help="ONNX model written by tools/export_model.py")
    parser.add_argument("--output", required=True, help="output folder (created if needed)")
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="sliding-window size (default: whole image)")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="sliding-window stride (with --crop-size)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: all cores)")
    args = parser.parse_args(argv)
    if (args.crop_size is None) != (args.stride is None):
        parser.error("--crop-size and --stride go together")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the model on the inputs; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    files = collect_image_files(args.inputs)
    segmenter = OnnxSemSegmenter(args.model, num_threads=args.threads)
    window = dict(crop_size=args.crop_size, stride=args.stride)
    skipped = segment_image_files(files, lambda image: segmenter.predict(image, **window).argmax(axis=0),
                                  output_dir=args.output, class_names=segmenter.class_names,
                                  colors=segmenter.class_colors, alpha=args.alpha, desc="infer_onnx")
    return 1 if len(skipped) == len(files) else 0  # 1: no image could be read


if __name__ == "__main__":
    sys.exit(main())

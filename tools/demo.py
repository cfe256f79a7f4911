#!/usr/bin/env python3
"""Segment image files with a trained model: a colored overlay and a raw label PNG per image.

Inputs are image files, folders (their images, sorted, not recursive) or glob patterns. For each
input ``<stem>.<ext>`` the output folder gets (written by dinov3_m2f.data.outputs, the writer of
tools/infer_onnx.py too):
    <stem>_overlay.png   the image with the predicted classes drawn over it and a legend of the
                         classes present on the right (names and colors from the test dataset's
                         metadata; drawn by dinov3_m2f.data.visualize.draw_overlay)
    <stem>_labels.png    uint8 class ids, one channel, same size as the image

An image that cannot be read or segmented is skipped with a message naming it (the others go on);
the exit code is 0 when at least one image was segmented (the skipped files are listed at the end),
1 when none was. Overlays of images over 2048 pixels a side are drawn on a downsampled copy (the
label PNG keeps the full size). In whole-image mode, an image over 2048 x 2048 pixels is refused
before it is decoded, with a message pointing to sliding windows (--test-mode slide) and to
tools/segment_scenes.py, which segments scenes of any size in memory bounded by the window.

Examples:
    python tools/demo.py --config-file configs/synthetic/m2f_tiny_synthetic.py \
        --checkpoint output/m2f_tiny_synthetic/model_final.pth --output demo_out \
        datasets/dinov3_m2f_synthetic/val/images
    python tools/demo.py --config-file configs/loveda/m2f_vitl16_sat493m_512.py \
        --checkpoint model_final.pth --output out --test-mode tta --tta-scales 0.75 1.0 1.25 \
        --tta-flip "tiles/*.png" --opts model.backbone.weights=checkpoints/vitl16_sat493m.pth
"""
import argparse
import logging
import sys
from typing import List, Optional, Sequence

from dinov3_m2f.d2.predictor import TOO_LARGE_HINT, SemSegPredictor
from dinov3_m2f.data.files import collect_image_files
from dinov3_m2f.data.outputs import segment_image_files


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    files = collect_image_files(args.inputs)
    predictor = SemSegPredictor.from_config(
        args.config_file,
        checkpoint=args.checkpoint,
        overrides=[*inference_overrides(args), *args.opts],
        device=args.device,
        autocast=args.autocast,
    )
    skipped = segment_image_files(files, predictor, output_dir=args.output,
                                  class_names=predictor.class_names,
                                  colors=predictor.metadata.get("stuff_colors"), alpha=args.alpha,
                                  desc="demo", max_pixels=predictor.max_image_pixels,
                                  too_large_hint=TOO_LARGE_HINT)
    return 1 if len(skipped) == len(files) else 0  # 1: no image could be read


if __name__ == "__main__":
    sys.exit(main())

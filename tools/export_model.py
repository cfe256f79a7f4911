#!/usr/bin/env python3
"""Export a trained Mask2Former model for deployment: a torch.export program (.pt2) or ONNX.

The exported model takes an RGB image batch [B, 3, H, W], uint8 (default) or float32 with values
in 0..255, normalises and pads it inside, and returns ``probs`` [B, C, H, W] (float32 per-class
probabilities) and ``labels`` [B, H, W] (int64 argmax), whole-image inference at the input size.

* ``--format torch_export``: an ``ExportedProgram`` saved with ``torch.export.save``; deformable
  attention stays the registered custom op, so it loads and runs where ``import dinov3_m2f``
  works (``dinov3_m2f.deploy.export.load_program_runner``, which checks the input size first).
  It runs on the device it was exported on.
* ``--format onnx``: opset >= 17; deformable attention is lowered to standard ONNX operators
  (``GridSample``), so it runs on onnxruntime without torch, detectron2 or our extension
  (``tools/infer_onnx.py``).

Without ``--dynamic`` the batch size is 1 and H x W is fixed to ``--input-size``; with it batch,
height and width are free (``--input-size`` is only the traced example; H and W must be at least
33, so that the stride-32 feature map has two cells). Exporting needs the
compiled extension. The checkpoint is loaded like ``--eval-only`` does: a trainable-only
checkpoint gets the frozen ViT from ``model.backbone.weights`` (or its ``init_seed``), built in
float32 whatever ``model.backbone.vit_dtype`` says (the exported model computes in float32).

After writing, the exported model is run on a random image and compared with PyTorch; the
command fails when probabilities differ by more than 1e-4 or labels agree on less than 99.9 %.
``--benchmark N`` then times N images of PyTorch on CPU against the exported model (median per
image, ``dinov3_m2f.benchmarking``) and prints a row for docs/benchmarks.md.

Examples:
    python tools/export_model.py --config-file configs/synthetic/m2f_tiny_synthetic.py \
        --checkpoint output/m2f_tiny_synthetic/model_final.pth --format onnx --input-size 128 128
    python tools/export_model.py --config-file configs/loveda/m2f_vitl16_sat493m_512.py \
        --checkpoint model_final.pth --format torch_export --input-size 512 512 --dynamic \
        --output loveda.pt2 --opts model.backbone.weights=checkpoints/vitl16_sat493m.pth
"""
import argparse
import datetime
import logging
import os
import sys
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from dinov3_m2f.benchmarking import describe_machine, load_average, markdown_table, time_alternating
from dinov3_m2f.d2 import DINOv3Mask2Former
from dinov3_m2f.d2.predictor import SemSegPredictor
from dinov3_m2f.deploy.export import (
    DEFAULT_ONNX_OPSET,
    DYNAMIC_EXAMPLE_BATCH,
    example_image,
    export_onnx,
    export_program,
    load_program_runner,
    save_program,
)
from dinov3_m2f.deploy.metadata import INPUT_DTYPES, make_metadata
from dinov3_m2f.deploy.module import SemSegExportModule
from dinov3_m2f.deploy.parity import compare_probs

logger = logging.getLogger("export_model")

FORMATS = {"torch_export": ".pt2", "onnx": ".onnx"}
# Untimed runs before a timed benchmark.
BENCHMARK_WARMUP = 2
MS_PER_S = 1000.0
# The ONNX exporter's libraries log every graph rewrite (INFO) and every constant they do not
# fold (WARNING).
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")
# Exported models compute in float32: a config's bfloat16 frozen ViT (model.backbone.vit_dtype)
# is built in float32 from the same weights (ONNX runtimes have no bfloat16 convolutions).
FLOAT32_OVERRIDES = ("model.backbone.vit_dtype=float32",)

Probabilities = Callable[[torch.Tensor], np.ndarray]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="LazyConfig file of the model")
    parser.add_argument("--checkpoint", required=True,
                        help="trainable-only or full checkpoint (.pth) or .safetensors")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--input-size", type=int, nargs=2, required=True, metavar=("H", "W"),
                        help="input size (traced example size with --dynamic)")
    parser.add_argument("--dynamic", action="store_true", help="free batch size, height and width")
    parser.add_argument("--output", default=None,
                        help="output file (default: beside the checkpoint, <stem>_<H>x<W>[_dynamic].pt2|.onnx)")
    parser.add_argument("--input-dtype", choices=INPUT_DTYPES, default="uint8",
                        help="dtype of the image input (values 0..255 either way)")
    parser.add_argument("--opset", type=int, default=DEFAULT_ONNX_OPSET, help="ONNX opset (>= 17)")
    parser.add_argument("--device", default="cpu",
                        help="device to export on (a .pt2 program runs on this device)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--benchmark", type=int, default=0, metavar="N",
                        help="time N images of PyTorch (CPU) against the exported model")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of PyTorch and onnxruntime (default: torch's default)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides key=value (last option)")
    args = parser.parse_args(argv)
    if min(args.input_size) < 1 or args.benchmark < 0:
        parser.error("--input-size must be positive and --benchmark >= 0")
    if args.benchmark and args.device != "cpu":
        parser.error("--benchmark compares CPU runtimes: use it with --device cpu")
    return args


def default_output(checkpoint: str, *, fmt: str, input_size: Sequence[int], dynamic: bool) -> str:
    """``<checkpoint stem>_<H>x<W>[_dynamic].<ext>`` beside the checkpoint."""
    stem = os.path.splitext(checkpoint)[0]
    suffix = "_dynamic" if dynamic else ""
    return f"{stem}_{input_size[0]}x{input_size[1]}{suffix}{FORMATS[fmt]}"


def build_export_module(predictor: SemSegPredictor) -> SemSegExportModule:
    """The exportable module around the predictor's Mask2Former model (weights shared)."""
    model = predictor.model
    if not isinstance(model, DINOv3Mask2Former):
        raise ValueError(
            f"export supports DINOv3Mask2Former models; the config builds a {type(model).__name__}"
        )
    return SemSegExportModule.from_model(model)


def exported_probs(path: str, fmt: str) -> Probabilities:
    """A function running the exported file: image batch -> probabilities as numpy."""
    if fmt == "onnx":
        from dinov3_m2f.deploy.onnx_runner import OnnxSemSegmenter

        segmenter = OnnxSemSegmenter(path, num_threads=torch.get_num_threads())
        return lambda images: segmenter.run(images.cpu().numpy())
    program = load_program_runner(path)
    return lambda images: program(images)[0].detach().cpu().numpy()


def benchmark_row(
    module: SemSegExportModule, path: str, *, args: argparse.Namespace, image: torch.Tensor
) -> str:
    """Time ``args.benchmark`` single images through PyTorch (CPU) and the exported model ``path``
    (median per image), as a docs/benchmarks.md row with the load average before and after.

    The two are timed call by call in turn (``time_alternating``), so that other jobs on
    the machine slow both alike. Run with ``OMP_WAIT_POLICY=PASSIVE`` on a shared machine: else
    PyTorch's OpenMP threads spin while waiting for busy cores (the row records the policy).
    """
    image = image[:1]
    exported = exported_probs(path, args.format)
    load_before = load_average()

    def torch_call() -> None:
        with torch.inference_mode():
            module(image)

    timings = time_alternating({"torch": torch_call, "exported": lambda: exported(image)},
                               device=torch.device("cpu"), warmup=BENCHMARK_WARMUP,
                               iters=args.benchmark)
    medians = {name: timing.median_ms for name, timing in timings.items()}
    runtime = "torch.export"
    if args.format == "onnx":
        import onnxruntime

        runtime = f"onnxruntime {onnxruntime.__version__} CPU"
    height, width = args.input_size
    header = ["date", "machine", "torch", "exported runtime", "config", "input", "threads",
              "OMP_WAIT_POLICY", "load avg before / after", "PyTorch img/s", "exported img/s",
              "PyTorch / exported time"]
    row = [datetime.date.today().isoformat(), describe_machine(torch.device("cpu")), torch.__version__,
           runtime, os.path.basename(args.config_file), f"{height}x{width} {args.input_dtype}",
           torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "unset"),
           f"{load_before} / {load_average()}", f"{MS_PER_S / medians['torch']:.2f}",
           f"{MS_PER_S / medians['exported']:.2f}", f"{medians['torch'] / medians['exported']:.2f}x"]
    return markdown_table(header, [row])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Export, check and optionally benchmark; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in EXPORTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    output = args.output or default_output(
        args.checkpoint, fmt=args.format, input_size=args.input_size, dynamic=args.dynamic
    )
    if os.path.exists(output) and not args.overwrite:
        raise FileExistsError(f"output {output} exists; pass --overwrite to replace it")
    predictor = SemSegPredictor.from_config(
        args.config_file, checkpoint=args.checkpoint, overrides=[*args.opts, *FLOAT32_OVERRIDES],
        device=args.device, autocast="none",
    )
    if predictor.augmentations.augs:
        logger.warning(
            "The config's test mapper transforms images (%s) before the model; the exported model "
            "does not: give it images prepared the same way", predictor.augmentations.augs
        )
    module = build_export_module(predictor)
    metadata = make_metadata(
        class_names=predictor.class_names,
        class_colors=predictor.metadata.get("stuff_colors", None),
        input_dtype=args.input_dtype,
        input_size=args.input_size,
        dynamic=args.dynamic,
        pixel_mean=module.pixel_mean.flatten().tolist(),
        pixel_std=module.pixel_std.flatten().tolist(),
        size_divisibility=module.size_divisibility,
        config_file=args.config_file,
        checkpoint=args.checkpoint,
    )
    height, width = args.input_size
    example = example_image(
        height=height, width=width, batch=DYNAMIC_EXAMPLE_BATCH if args.dynamic else 1,
        dtype=args.input_dtype,
    ).to(predictor.device)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if args.format == "onnx":
        export_onnx(module, output, example=example, dynamic=args.dynamic, metadata=metadata,
                    opset=args.opset)
    else:
        save_program(export_program(module, example, dynamic=args.dynamic), output, metadata=metadata)

    with torch.inference_mode():
        reference = module(example)[0].cpu().numpy()
    parity = compare_probs(reference, exported_probs(output, args.format)(example))
    print(f"Wrote {output} ({args.format}, {'dynamic' if args.dynamic else 'static'} "
          f"{height}x{width}, {args.input_dtype} input). Against PyTorch on a random image: {parity}")
    if not parity.ok:
        logger.error("The exported model does not reproduce PyTorch within the tolerance")
        return 1
    if args.benchmark:
        print(benchmark_row(module, output, args=args, image=example))
    return 0


if __name__ == "__main__":
    sys.exit(main())

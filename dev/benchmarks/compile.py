"""Speed-up of torch.compile on the core model (DINOv3 ViT + adapter + Mask2Former head).

The model is built from ``dinov3_m2f.modeling`` (no detectron2) with random weights and the
compiled MSDeformAttn op: ``--model tiny`` is the tiny model of
configs/synthetic/m2f_tiny_synthetic.py (``dinov3_m2f.modeling.segmentor``), a preset name (e.g.
``vits16``) the preset ViT with the original Mask2Former head of width ``--hidden-dim``. It times
inference (forward under ``torch.inference_mode``) or a training step (forward and backward of the
trainable parameters) in eager mode and compiled with ``torch.compile(fullgraph=True,
backend=--backend)`` (so a graph break fails the run), the two taking turns call by call; the
first compiled call, which compiles, is reported on its own. Times are medians over ``--iters``
calls after ``--warmup`` calls; the last column is the largest difference between the eager and
the compiled ``pred_masks``.

Examples:
    python dev/benchmark.py compile --model tiny --amp bf16 --threads 2
    python dev/benchmark.py compile --model vits16 --image-size 512 --batch-size 1 --amp bf16
    python dev/benchmark.py compile --model vitl16 --device cuda --mode train --batch-size 16
"""
import argparse
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from dinov3_m2f.benchmarking import AMP_FLAGS, autocast, markdown_table, time_alternating, time_ms, write_records
from dinov3_m2f.layers import _extension
from dinov3_m2f.modeling.dinov3 import INTERACTION_INDEXES, build_dinov3
from dinov3_m2f.modeling.segmentor import TINY_IMAGE_SIZE, build_segmentor, build_tiny_segmentor

from . import common

# Input side of a preset model.
PRESET_IMAGE_SIZE = 512
Outputs = Dict[str, object]


def build_model(name: str, *, hidden_dim: int = 256, num_classes: int = 150) -> nn.Sequential:
    """``nn.Sequential(adapter, head)`` of the tiny model (``name="tiny"``) or of a ViT preset.

    Args:
        name: "tiny" or a DINOv3 preset name (see ``INTERACTION_INDEXES``).
        hidden_dim: head width of a preset model (the original Mask2Former head otherwise).
        num_classes: classes of a preset model.
    """
    if name == "tiny":
        return nn.Sequential(*build_tiny_segmentor())
    return nn.Sequential(*build_segmentor(build_dinov3(name), interaction_indexes=INTERACTION_INDEXES[name],
                                          head_kwargs=dict(hidden_dim=hidden_dim, num_classes=num_classes)))


def predictions(out: Outputs) -> List[torch.Tensor]:
    """The final and auxiliary class and mask logits as one flat list."""
    return [p[key] for p in [out, *out["aux_outputs"]] for key in ("pred_logits", "pred_masks")]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = common.make_parser("compile", __doc__)
    parser.add_argument("--model", default="tiny", choices=["tiny", *sorted(INTERACTION_INDEXES)])
    parser.add_argument("--hidden-dim", type=int, default=256, help="head width of a preset model")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"default: {TINY_IMAGE_SIZE} (tiny), {PRESET_IMAGE_SIZE}")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--mode", default="infer", choices=["infer", "train"])
    parser.add_argument("--amp", default="bf16", choices=sorted(AMP_FLAGS), help="autocast dtype")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    common.add_run_options(parser, device="cpu", warmup=2, iters=10)
    args = common.parse(parser, argv, positive=["batch_size", "image_size"])
    if args.image_size is None:
        args.image_size = TINY_IMAGE_SIZE if args.model == "tiny" else PRESET_IMAGE_SIZE
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    _extension.require("dev/benchmark.py compile")
    device = common.start(args)
    amp_dtype = AMP_FLAGS[args.amp]
    model = build_model(args.model, hidden_dim=args.hidden_dim).to(device)
    model.train(args.mode == "train")
    params = [p for p in model.parameters() if p.requires_grad]
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    compiled = torch.compile(model, fullgraph=True, backend=args.backend)

    def runner(module: nn.Module) -> Callable[[], Outputs]:
        def run() -> Outputs:
            with autocast(device, amp_dtype):
                if args.mode == "infer":
                    with torch.inference_mode():
                        return module(images)
                out = module(images)
                loss = sum(t.float().square().mean() for t in predictions(out))
            torch.autograd.grad(loss, params)
            return out

        return run

    runs = {"eager": runner(model), "compiled": runner(compiled)}
    compile_s = time_ms(runs["compiled"], device=device, warmup=0, iters=1)[0] / 1e3
    timings = time_alternating(runs, device=device, warmup=args.warmup, iters=args.iters)
    diff: Optional[float] = None  # training: batch-norm statistics and dropout make two calls differ anyway
    if args.mode == "infer":
        diff = (runs["compiled"]()["pred_masks"].float() - runs["eager"]()["pred_masks"].float()).abs().max().item()
    eager_ms, compiled_ms = timings["eager"].median_ms, timings["compiled"].median_ms

    record = dict(common.row_start(args, device), threads=torch.get_num_threads() if device.type == "cpu" else "-",
                  model=args.model, mode=args.mode, amp=args.amp, batch=args.batch_size, image_size=args.image_size,
                  backend=args.backend, first_call_s=compile_s, eager_ms=eager_ms, compiled_ms=compiled_ms,
                  speedup=eager_ms / compiled_ms, max_abs_diff=diff)
    write_records(args.json, [record])
    print(markdown_table(
        ["date", "machine", "torch", "threads", "model", "mode", "amp", "batch", "input", "backend", "first call s",
         "eager ms", "compiled ms", "speed-up", "max abs pred_masks diff"],
        [[record["date"], record["machine"], record["torch"], record["threads"], args.model, args.mode, args.amp,
          args.batch_size, f"{args.image_size}x{args.image_size}", args.backend, f"{compile_s:.0f}",
          f"{eager_ms:.1f}", f"{compiled_ms:.1f}", f"{eager_ms / compiled_ms:.2f}x",
          "-" if diff is None else f"{diff:.2e}"]],
    ))
    return 0

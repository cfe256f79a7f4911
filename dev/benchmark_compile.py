#!/usr/bin/env python3
"""Speed-up of torch.compile on the core model (DINOv3 ViT + adapter + Mask2Former head).

The model is built from ``dinov3_m2f.modeling`` (no detectron2) with random weights and the
compiled MSDeformAttn op: ``--model tiny`` has the sizes of configs/synthetic/m2f_tiny_synthetic.py,
a preset name (e.g. ``vits16``) the preset ViT with the original Mask2Former head of width
``--hidden-dim``. It times inference (forward under ``torch.inference_mode``) or a training step
(forward and backward of the trainable parameters) in eager mode and compiled with
``torch.compile(fullgraph=True, backend=--backend)`` (so a graph break fails the run); the first
compiled call, which compiles, is reported on its own. Times are medians over ``--iters`` calls
after ``--warmup`` calls; the last column is the largest difference between the eager and the
compiled ``pred_masks``. ``--json`` also writes the figures as a record (``dev/gpu_check.py``
reads it).

Examples:
    python dev/benchmark_compile.py --model tiny --amp bf16 --threads 2
    python dev/benchmark_compile.py --model vits16 --image-size 512 --batch-size 1 --amp bf16
    python dev/benchmark_compile.py --model vitl16 --device cuda --mode train --batch-size 16
"""
import argparse
import datetime
import logging
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from dinov3_m2f.benchmarking import AMP_FLAGS, autocast, describe_machine, markdown_table, time_ms, write_records
from dinov3_m2f.layers import _extension
from dinov3_m2f.modeling.adapter import DINOv3Adapter
from dinov3_m2f.modeling.dinov3 import INTERACTION_INDEXES, build_dinov3
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead


# The sizes of configs/synthetic/m2f_tiny_synthetic.py.
TINY_VIT = dict(embed_dim=64, depth=4, num_heads=2, patch_size=16)
TINY_ADAPTER = dict(interaction_indexes=[0, 1, 2, 3], conv_inplane=16, deform_num_heads=4, drop_path_rate=0.0)
TINY_HEAD = dict(
    num_classes=7,
    hidden_dim=64,
    num_queries=16,
    nheads=4,
    enc_dim_feedforward=128,
    dec_dim_feedforward=128,
    enc_layers=2,
    dec_layers=3,
)
TINY_IMAGE_SIZE = 128
Outputs = Dict[str, object]


def build_model(name: str, *, hidden_dim: int = 256, num_classes: int = 150) -> nn.Sequential:
    """``nn.Sequential(adapter, head)`` of the tiny config (``name="tiny"``) or of a ViT preset.

    Args:
        name: "tiny" or a DINOv3 preset name (see ``INTERACTION_INDEXES``).
        hidden_dim: head width of a preset model (the original Mask2Former head otherwise).
        num_classes: classes of a preset model.
    """
    if name == "tiny":
        adapter = DINOv3Adapter(build_dinov3(None, **TINY_VIT), **TINY_ADAPTER)
        head_kwargs = TINY_HEAD
    else:
        adapter = DINOv3Adapter(build_dinov3(name), interaction_indexes=INTERACTION_INDEXES[name])
        head_kwargs = dict(hidden_dim=hidden_dim, num_classes=num_classes)
    input_shape = {level: (adapter.out_channels, stride) for level, stride in adapter.out_strides.items()}
    return nn.Sequential(adapter, Mask2FormerHead(input_shape, **head_kwargs))


def predictions(out: Outputs) -> List[torch.Tensor]:
    """The final and auxiliary class and mask logits as one flat list."""
    return [p[key] for p in [out, *out["aux_outputs"]] for key in ("pred_logits", "pred_masks")]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=["tiny", *sorted(INTERACTION_INDEXES)])
    parser.add_argument("--hidden-dim", type=int, default=256, help="head width of a preset model")
    parser.add_argument("--image-size", type=int, default=None, help=f"default: {TINY_IMAGE_SIZE} (tiny), 512")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--mode", default="infer", choices=["infer", "train"])
    parser.add_argument("--amp", default="bf16", choices=sorted(AMP_FLAGS), help="autocast dtype")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--machine", default=None, help="machine description in the row (default: from the system)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as a JSON record")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--iters and --batch-size must be >= 1, --warmup >= 0")
    if args.image_size is None:
        args.image_size = TINY_IMAGE_SIZE if args.model == "tiny" else 512
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    _extension.require("dev/benchmark_compile.py")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = AMP_FLAGS[args.amp]
    torch.manual_seed(0)
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

    run_eager, run_compiled = runner(model), runner(compiled)
    compile_s = time_ms(run_compiled, device=device, warmup=0, iters=1)[0] / 1e3
    times: Dict[str, List[float]] = {"eager": [], "compiled": []}
    for _ in range(args.warmup):
        run_eager()
        run_compiled()
    for _ in range(args.iters):  # interleaved: load changes on a shared machine hit both alike
        times["eager"] += time_ms(run_eager, device=device, warmup=0, iters=1)
        times["compiled"] += time_ms(run_compiled, device=device, warmup=0, iters=1)
    diff: Optional[float] = None  # training: batch-norm statistics and dropout make two calls differ anyway
    if args.mode == "infer":
        diff = (run_compiled()["pred_masks"].float() - run_eager()["pred_masks"].float()).abs().max().item()
    eager_ms, compiled_ms = (statistics.median(times[k]) for k in ("eager", "compiled"))

    machine = args.machine or describe_machine(device)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(markdown_table(
        ["date", "machine", "torch", "threads", "model", "mode", "amp", "batch", "input", "backend", "first call s",
         "eager ms", "compiled ms", "speed-up", "max abs pred_masks diff"],
        [[datetime.date.today().isoformat(), machine, torch.__version__, threads, args.model, args.mode, args.amp,
          args.batch_size, f"{args.image_size}x{args.image_size}", args.backend, f"{compile_s:.0f}",
          f"{eager_ms:.1f}", f"{compiled_ms:.1f}", f"{eager_ms / compiled_ms:.2f}x",
          "-" if diff is None else f"{diff:.2e}"]],
    ))
    write_records(args.json, [dict(model=args.model, mode=args.mode, amp=args.amp, batch=args.batch_size,
                                   image_size=args.image_size, backend=args.backend, first_call_s=compile_s,
                                   eager_ms=eager_ms, compiled_ms=compiled_ms, speedup=eager_ms / compiled_ms,
                                   max_abs_diff=diff)])
    return 0


if __name__ == "__main__":
    sys.exit(main())

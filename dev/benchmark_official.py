#!/usr/bin/env python3
"""Inference speed of our segmentor against the official DINOv3 one: same weights, one process.

The official segmentor is built by ``build_segmentation_decoder(backbone, decoder_type="m2f")`` from
a local checkout of facebookresearch/dinov3 (``--official-repo``, which must be importable with its
own requirements, e.g. ``torchmetrics``; it is never part of this repository). Ours is the same
architecture from ``dinov3_m2f.modeling`` (ViT preset + DINOv3Adapter + the official head shape of
Mask2FormerHead), loaded with the official model's random weights through
``convert_official_segmentor_state_dict``. Weights are random: the figures are speed and numerics.

Every timed iteration runs each model once on the same batch (interleaved, so load changes on a
shared machine hit all of them alike): adapter + head forward under ``torch.inference_mode`` and
``--amp`` autocast. Per model and batch size the table gives the median wall time and process CPU
time per batch, images/s, the speed relative to the official model (by wall time, and by CPU time,
which a busy shared machine disturbs less), and how far its outputs are
from ours in float32 without autocast: the largest and the mean ``pred_masks`` logit difference.

Models:
    official      the official segmentor; it keeps its pixel decoder in float32 on CUDA only
                  (its autocast guard names the CUDA device), so on CPU that runs under autocast
    ours-fp32-pd  ours with the pixel decoder in float32 (pixel_decoder_fp32=True)
    ours          ours with the per-device default (pixel_decoder_fp32=None)

Example:
    python dev/benchmark_official.py --official-repo /path/to/dinov3 --batch-sizes 1 2 --threads 2
"""
import argparse
import datetime
import importlib
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from dinov3_m2f.benchmarking import AMP_FLAGS, autocast, describe_machine, synchronize
from dinov3_m2f.modeling.adapter import DINOv3Adapter
from dinov3_m2f.modeling.dinov3 import INTERACTION_INDEXES, build_dinov3
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead, official_dinov3_head_kwargs
from dinov3_m2f.weights.official_head import convert_official_segmentor_state_dict, load_converted_state_dict

# ours-fp32-pd and ours share one model; the pixel decoder's force_fp32 is set before each run
OUR_MODELS = {"ours-fp32-pd": True, "ours": None}
Outputs = Dict[str, object]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True,
                        help="local checkout of facebookresearch/dinov3 (the folder holding the dinov3 package)")
    parser.add_argument("--backbone", default="vits16", choices=sorted(INTERACTION_INDEXES),
                        help="DINOv3 preset (random weights)")
    parser.add_argument("--hidden-dim", type=int, default=256, help="head width")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--amp", default="bf16", choices=sorted(AMP_FLAGS), help="autocast dtype")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--machine", default=None, help="machine description in the rows (default: from the system)")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        parser.error("--iters and --batch-sizes must be >= 1, --warmup >= 0")
    if not os.path.isdir(os.path.join(args.official_repo, "dinov3")):
        parser.error(f"--official-repo {args.official_repo} has no dinov3/ package folder")
    return args


def build_official(repo: str, *, backbone: str, hidden_dim: int, num_classes: int) -> nn.Module:
    """The official segmentor with its own random initialisation (backbone from the hub builder)."""
    sys.path.insert(0, os.path.abspath(repo))
    backbones = importlib.import_module("dinov3.hub.backbones")
    models = importlib.import_module("dinov3.eval.segmentation.models")
    vit = getattr(backbones, f"dinov3_{backbone}")(pretrained=False)
    return models.build_segmentation_decoder(vit, decoder_type="m2f", hidden_dim=hidden_dim, num_classes=num_classes)


def build_ours(official: nn.Module, *, backbone: str, hidden_dim: int, num_classes: int) -> nn.Sequential:
    """Our adapter + head of the official shape, holding the official model's weights."""
    adapter = DINOv3Adapter(build_dinov3(backbone), interaction_indexes=INTERACTION_INDEXES[backbone])
    input_shape = {name: (adapter.out_channels, stride) for name, stride in adapter.out_strides.items()}
    head = Mask2FormerHead(input_shape, **official_dinov3_head_kwargs(hidden_dim=hidden_dim, num_classes=num_classes))
    load_converted_state_dict(convert_official_segmentor_state_dict(official.state_dict()), adapter=adapter, head=head)
    return nn.Sequential(adapter, head)


def compare(out: Outputs, reference: Outputs) -> str:
    """Largest and mean absolute difference of the mask logits from ``reference``."""
    diff = (out["pred_masks"].float() - reference["pred_masks"].float()).abs()
    return f"{diff.max().item():.3f} / {diff.mean().item():.4f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = AMP_FLAGS[args.amp]
    torch.manual_seed(0)
    sizes = dict(backbone=args.backbone, hidden_dim=args.hidden_dim, num_classes=args.num_classes)
    official = build_official(args.official_repo, **sizes).to(device).eval()
    ours = build_ours(official, **sizes).to(device).eval()
    pixel_decoder = ours[1].pixel_decoder

    def run_ours(force_fp32: Optional[bool]) -> Callable[[torch.Tensor], Outputs]:
        def run(images: torch.Tensor) -> Outputs:
            pixel_decoder.force_fp32 = force_fp32
            return ours(images)

        return run

    def run_official(images: torch.Tensor) -> Outputs:
        # the official FeatureDecoder.forward enters a CUDA-only autocast; its two stages are called
        # directly so that the same autocast as ours applies on every device
        adapter, head = official.segmentation_model
        return head(adapter(images))

    models: Dict[str, Callable[[torch.Tensor], Outputs]] = {"official": run_official}
    models.update({name: run_ours(force_fp32) for name, force_fp32 in OUR_MODELS.items()})

    date = datetime.date.today().isoformat()
    machine = args.machine or describe_machine(device)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print("| date | machine | torch | threads | amp | batch | input | model | ms/batch | img/s | CPU ms/batch "
          "| speed vs official (wall / CPU) | pred_masks diff vs ours fp32 (max / mean) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, args.image_size, args.image_size, generator=gen).to(device)
        with torch.inference_mode():
            pixel_decoder.force_fp32 = True
            reference = ours(images)  # float32, no autocast
            outputs = {}
            wall: Dict[str, List[float]] = {name: [] for name in models}
            cpu: Dict[str, List[float]] = {name: [] for name in models}
            with autocast(device, amp_dtype):
                for name, run in models.items():
                    for _ in range(args.warmup):
                        run(images)
                for _ in range(args.iters):
                    for name, run in models.items():
                        synchronize(device)
                        start_wall, start_cpu = time.perf_counter(), time.process_time()
                        outputs[name] = run(images)
                        synchronize(device)
                        wall[name].append(time.perf_counter() - start_wall)
                        cpu[name].append(time.process_time() - start_cpu)
        official_ms = 1e3 * statistics.median(wall["official"])
        official_cpu_ms = 1e3 * statistics.median(cpu["official"])
        for name in models:
            ms = 1e3 * statistics.median(wall[name])
            cpu_ms = 1e3 * statistics.median(cpu[name])
            print(f"| {date} | {machine} | {torch.__version__} | {threads} | {args.amp} | {batch} "
                  f"| {args.image_size}x{args.image_size} | {name} | {ms:.0f} | {1e3 * batch / ms:.2f} | {cpu_ms:.0f} "
                  f"| {official_ms / ms:.2f}x / {official_cpu_ms / cpu_ms:.2f}x | {compare(outputs[name], reference)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

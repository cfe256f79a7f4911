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
    python dev/benchmark.py official --official-repo /path/to/dinov3 --batch-sizes 1 2 --threads 2
"""
import argparse
import importlib
import os
import sys
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from dinov3_m2f.benchmarking import AMP_FLAGS, autocast, markdown_table, time_alternating
from dinov3_m2f.modeling.dinov3 import INTERACTION_INDEXES, build_dinov3
from dinov3_m2f.modeling.mask2former_head import official_dinov3_head_kwargs
from dinov3_m2f.modeling.segmentor import build_segmentor
from dinov3_m2f.weights.official_head import convert_official_segmentor_state_dict, load_converted_state_dict

from . import common

# ours-fp32-pd and ours share one model; the pixel decoder's force_fp32 is set before each run
OUR_MODELS = {"ours-fp32-pd": True, "ours": None}
Outputs = Dict[str, object]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = common.make_parser("official", __doc__)
    parser.add_argument("--official-repo", required=True,
                        help="local checkout of facebookresearch/dinov3 (the folder holding the dinov3 package)")
    parser.add_argument("--backbone", default="vits16", choices=sorted(INTERACTION_INDEXES),
                        help="DINOv3 preset (random weights)")
    parser.add_argument("--hidden-dim", type=int, default=256, help="head width")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--amp", default="bf16", choices=sorted(AMP_FLAGS), help="autocast dtype")
    common.add_run_options(parser, device="cpu", warmup=1, iters=5)
    args = common.parse(parser, argv, positive=["batch_sizes"])
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
    adapter, head = build_segmentor(
        build_dinov3(backbone), interaction_indexes=INTERACTION_INDEXES[backbone],
        head_kwargs=official_dinov3_head_kwargs(hidden_dim=hidden_dim, num_classes=num_classes))
    load_converted_state_dict(convert_official_segmentor_state_dict(official.state_dict()), adapter=adapter, head=head)
    return nn.Sequential(adapter, head)


def compare(out: Outputs, reference: Outputs) -> str:
    """Largest and mean absolute difference of the mask logits from ``reference``."""
    diff = (out["pred_masks"].float() - reference["pred_masks"].float()).abs()
    return f"{diff.max().item():.3f} / {diff.mean().item():.4f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = common.start(args)
    amp_dtype = AMP_FLAGS[args.amp]
    sizes = dict(backbone=args.backbone, hidden_dim=args.hidden_dim, num_classes=args.num_classes)
    official = build_official(args.official_repo, **sizes).to(device).eval()
    ours = build_ours(official, **sizes).to(device).eval()
    pixel_decoder = ours[1].pixel_decoder
    images = torch.empty(0)  # the batch of the current row

    def run_ours(force_fp32: Optional[bool]) -> Callable[[], Outputs]:
        def run() -> Outputs:
            pixel_decoder.force_fp32 = force_fp32
            return ours(images)

        return run

    def run_official() -> Outputs:
        # the official FeatureDecoder.forward enters a CUDA-only autocast; its two stages are called
        # directly so that the same autocast as ours applies on every device
        adapter, head = official.segmentation_model
        return head(adapter(images))

    models: Dict[str, Callable[[], Outputs]] = {"official": run_official}
    models.update({name: run_ours(force_fp32) for name, force_fp32 in OUR_MODELS.items()})

    first = common.row_start(args, device)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    rows = []
    gen = torch.Generator().manual_seed(0)
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, args.image_size, args.image_size, generator=gen).to(device)
        with torch.inference_mode():
            pixel_decoder.force_fp32 = True
            reference = ours(images)  # float32, no autocast
            with autocast(device, amp_dtype):
                outputs = {name: run() for name, run in models.items()}
                timings = time_alternating(models, device=device, warmup=args.warmup, iters=args.iters)
        official_ms, official_cpu_ms = timings["official"].median_ms, timings["official"].median_cpu_ms
        for name in models:
            ms, cpu_ms = timings[name].median_ms, timings[name].median_cpu_ms
            rows.append([first["date"], first["machine"], first["torch"], threads, args.amp, batch,
                         f"{args.image_size}x{args.image_size}", name, f"{ms:.0f}", f"{1e3 * batch / ms:.2f}",
                         f"{cpu_ms:.0f}", f"{official_ms / ms:.2f}x / {official_cpu_ms / cpu_ms:.2f}x",
                         compare(outputs[name], reference)])
    print(markdown_table(["date", "machine", "torch", "threads", "amp", "batch", "input", "model", "ms/batch",
                          "img/s", "CPU ms/batch", "speed vs official (wall / CPU)",
                          "pred_masks diff vs ours fp32 (max / mean)"], rows))
    return 0

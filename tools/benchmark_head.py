#!/usr/bin/env python3
"""Benchmark one training step (forward + backward) of the ViT-Adapter + Mask2Former head.

The DINOv3 backbone is frozen (no backward through it) and randomly initialised; the numbers are
about speed and memory only. Default: ViT-L/16, 512x512 crops, batch 16, bf16 autocast, official
DINOv3 head shape (hidden 2048), on CUDA.

Examples:
    python tools/benchmark_head.py
    python tools/benchmark_head.py --head m2f --batch-size 8
    python tools/benchmark_head.py --tiny            # seconds on a CPU, checks that everything runs
"""
import argparse
import logging
import time
from typing import Dict, Tuple

import torch

from dinov3_m2f.layers import MSDeformAttn
from dinov3_m2f.modeling.adapter import DINOv3Adapter
from dinov3_m2f.modeling.dinov3 import INTERACTION_INDEXES, build_dinov3
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead, official_dinov3_head_kwargs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Tiny model for a quick functional run (CPU, a few seconds).
TINY_BACKBONE = dict(embed_dim=64, depth=4, num_heads=2, patch_size=16)
TINY_INTERACTIONS = [0, 1, 2, 3]
TINY_HEAD = dict(hidden_dim=32, nheads=4, enc_dim_feedforward=64, dec_dim_feedforward=64, enc_layers=2,
                 dec_layers=3, num_queries=10)
TINY_ADAPTER = dict(conv_inplane=16, deform_num_heads=4)
TINY_IMAGE_SIZE = 64
TINY_BATCH = 2
MIB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vitl16", choices=sorted(INTERACTION_INDEXES),
                        help="DINOv3 preset (random weights)")
    parser.add_argument("--head", default="official", choices=["official", "m2f"],
                        help="official DINOv3 head shape or the original Mask2Former ADE20K shape")
    parser.add_argument("--hidden-dim", type=int, default=None,
                        help="head width (default: 2048 for 'official', 256 for 'm2f')")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="autocast dtype")
    parser.add_argument("--pixel-decoder-low-precision", action="store_true",
                        help="let the pixel decoder run under autocast (the official head forces float32)")
    parser.add_argument("--impl", default="auto", choices=["auto", "compiled", "pytorch"],
                        help="MSDeformAttn implementation")
    parser.add_argument("--with-cp", action="store_true", help="activation checkpointing in the adapter")
    parser.add_argument("--device", default=None, help="default: cuda if available else cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--tiny", action="store_true",
                        help=f"tiny ViT/adapter/head, {TINY_IMAGE_SIZE}px, batch {TINY_BATCH} (functional check)")
    return parser.parse_args()


def build_models(args: argparse.Namespace, dtype: torch.dtype) -> Tuple[DINOv3Adapter, Mask2FormerHead]:
    backbone_dtype = None if dtype == torch.float32 else dtype
    if args.tiny:
        backbone = build_dinov3(None, **TINY_BACKBONE)
        adapter_kwargs = dict(TINY_ADAPTER, interaction_indexes=TINY_INTERACTIONS)
        head_kwargs = dict(TINY_HEAD, num_classes=args.num_classes)
    else:
        backbone = build_dinov3(args.backbone)
        adapter_kwargs = dict(interaction_indexes=INTERACTION_INDEXES[args.backbone])
        if args.head == "official":
            head_kwargs = official_dinov3_head_kwargs(hidden_dim=args.hidden_dim or 2048, num_classes=args.num_classes)
        else:
            head_kwargs = dict(hidden_dim=args.hidden_dim or 256, num_classes=args.num_classes)
    backbone.autocast_dtype = backbone_dtype  # the ViT owns its autocast
    adapter = DINOv3Adapter(backbone, with_cp=args.with_cp, **adapter_kwargs)
    input_shape = {name: (adapter.out_channels, stride) for name, stride in adapter.out_strides.items()}
    head_kwargs["pixel_decoder_fp32"] = not args.pixel_decoder_low_precision
    head = Mask2FormerHead(input_shape, **head_kwargs)
    for module in (adapter, head):
        for m in module.modules():
            if isinstance(m, MSDeformAttn):
                m.impl = args.impl
    return adapter, head


def _loss(out: Dict[str, object]) -> torch.Tensor:
    preds = [out] + list(out["aux_outputs"])
    return sum(p["pred_logits"].float().square().mean() + p["pred_masks"].float().square().mean() for p in preds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args()
    if args.tiny:
        args.image_size, args.batch_size = TINY_IMAGE_SIZE, TINY_BATCH
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    adapter, head = build_models(args, dtype)
    adapter.to(device).train()
    head.to(device).train()
    params = [p for m in (adapter, head) for p in m.parameters() if p.requires_grad]
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        with autocast:
            loss = _loss(head(adapter(images)))
        loss.backward()
        for p in params:
            p.grad = None

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    _sync(device)
    ms_per_iter = (time.perf_counter() - start) * 1000.0 / max(args.iters, 1)
    peak = f"{torch.cuda.max_memory_allocated(device) / MIB:.0f} MiB" if device.type == "cuda" else "n/a (CPU)"

    model = "tiny" if args.tiny else f"{args.backbone} + {args.head} head"
    n_train = sum(p.numel() for p in params)
    print("| model | device | image | batch | dtype | impl | trainable params | fwd+bwd ms/iter | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {model} | {device.type} | {args.image_size} | {args.batch_size} | {args.dtype} | {args.impl} "
        f"| {n_train / 1e6:.1f}M | {ms_per_iter:.1f} | {peak} |"
    )


if __name__ == "__main__":
    main()

"""The DINOv3 ViT forward pass: ours vs transformers' DINOv3ViTModel.

Both models get the same random weights (ours converted to the Hugging Face layout) and run the
same input, taking turns call by call; the table reports throughput, latency (median), peak memory
of one call (CUDA max allocated, or CPU peak resident set growth) and the max-abs difference of the
final-norm patch tokens.

Examples:
    python dev/benchmark.py backbone                                # ViT-L/16, 16 x 512^2, bf16, GPU
    python dev/benchmark.py backbone --device cpu --dtype fp32 --preset none \\
        --embed-dim 64 --depth 2 --num-heads 2 --batch 2 --size 64 --iters 2 --warmup 1
"""
import argparse
from typing import Callable, Dict, Optional, Sequence

import torch

from dinov3_m2f.benchmarking import DTYPES, MemoryMeter, autocast, markdown_table, time_alternating, write_records
from dinov3_m2f.modeling.dinov3 import DINOV3_PRESETS, build_dinov3
from dinov3_m2f.weights import convert_to_hf_state_dict, hf_config_from_model

from . import common


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = common.make_parser("backbone", __doc__)
    parser.add_argument("--preset", default="vitl16", help=f"{sorted(DINOV3_PRESETS)} or 'none' (use the size flags)")
    parser.add_argument("--embed-dim", type=int, help="override the width (required with --preset none)")
    parser.add_argument("--depth", type=int, help="override the number of blocks")
    parser.add_argument("--num-heads", type=int, help="override the number of heads")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="square input side (multiple of 16)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="autocast dtype (fp32: none)")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers model")
    common.add_run_options(parser)
    return common.parse(parser, argv, positive=["batch", "size"])


def hf_runner(ours: torch.nn.Module, images: torch.Tensor, autocast_dtype: Optional[torch.dtype]) -> Callable:
    """transformers' DINOv3ViTModel holding ``ours``' weights: ``run() -> patch tokens``."""
    import transformers

    config = {k: v for k, v in hf_config_from_model(ours).items() if k not in ("model_type", "architectures")}
    hf_model = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**config, attn_implementation="sdpa")).eval()
    hf_model.load_state_dict(convert_to_hf_state_dict(ours.state_dict(), layer_prefix="model.layer."))
    hf_model.requires_grad_(False).to(images.device)
    num_prefix = 1 + ours.n_storage_tokens

    def run() -> torch.Tensor:
        with torch.no_grad(), autocast(images.device, autocast_dtype):
            return hf_model(images).last_hidden_state[:, num_prefix:]

    return run


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = common.start(args)
    dtype = DTYPES[args.dtype]
    autocast_dtype = None if dtype == torch.float32 else dtype
    overrides = {k: v for k, v in (("embed_dim", args.embed_dim), ("depth", args.depth),
                                   ("num_heads", args.num_heads)) if v is not None}
    ours = build_dinov3(None if args.preset == "none" else args.preset, autocast_dtype=autocast_dtype,
                        **overrides).to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)

    def run_ours() -> torch.Tensor:
        return ours.forward_features(images)["x_norm_patchtokens"]

    runs: Dict[str, Callable] = {"ours": run_ours}
    if not args.no_hf:
        runs["transformers"] = hf_runner(ours, images, autocast_dtype)
    outputs = {label: fn().float() for label, fn in runs.items()}
    peaks = {}
    for label, fn in runs.items():
        meter = MemoryMeter(device)
        meter.start()
        fn()
        peaks[label] = meter.stop()
    timings = time_alternating(runs, device=device, warmup=args.warmup, iters=args.iters)

    first = common.row_start(args, device)
    print(f"{first['date']}, {first['machine']}, torch {first['torch']}; preset={args.preset} {overrides or ''} "
          f"batch={args.batch} size={args.size} dtype={args.dtype} device={device}")
    records = [dict(first, impl=label, preset=args.preset, batch=args.batch, size=args.size, dtype=args.dtype,
                    ms=timings[label].median_ms, images_per_s=args.batch * 1e3 / timings[label].median_ms,
                    peak_mib=peaks[label].peak_mib,
                    max_abs_diff=(outputs[label] - outputs["ours"]).abs().max().item()) for label in runs]
    write_records(args.json, records)
    print(markdown_table(
        ["impl", "images/s", "ms/iter", "peak MiB", "max abs diff vs ours"],
        ([r["impl"], f"{r['images_per_s']:.1f}", f"{r['ms']:.2f}", peaks[r["impl"]].cell(), f"{r['max_abs_diff']:.2e}"]
         for r in records),
    ))
    return 0

#!/usr/bin/env python3
"""Benchmark the DINOv3 ViT forward pass: ours vs transformers' DINOv3ViTModel.

Both models get the same random weights (ours converted to the Hugging Face layout) and run the
same input; the table reports throughput, latency, peak memory (CUDA max allocated, or CPU peak
resident set growth) and the max-abs difference of the final-norm patch tokens.

Examples:
    python dev/benchmark_backbone.py                                   # ViT-L/16, 16 x 512^2, bf16, GPU
    python dev/benchmark_backbone.py --device cpu --dtype fp32 --preset none \\
        --embed-dim 64 --depth 2 --num-heads 2 --batch 2 --size 64 --iters 2 --warmup 1
"""
import argparse
import contextlib
import statistics

import torch

from dinov3_m2f.benchmarking import DTYPES, MemoryMeter, markdown_table, parse_device, time_ms
from dinov3_m2f.modeling.dinov3 import DINOV3_PRESETS, build_dinov3
from dinov3_m2f.weights import convert_to_hf_state_dict, hf_config_from_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vitl16", help=f"{sorted(DINOV3_PRESETS)} or 'none' (use the size flags)")
    parser.add_argument("--embed-dim", type=int, help="override the width (required with --preset none)")
    parser.add_argument("--depth", type=int, help="override the number of blocks")
    parser.add_argument("--num-heads", type=int, help="override the number of heads")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="square input side (multiple of 16)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="autocast dtype (fp32: none)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<i>")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers model")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = parse_device(args.device)
    dtype = DTYPES[args.dtype]
    autocast_dtype = None if dtype == torch.float32 else dtype
    overrides = {k: v for k, v in (("embed_dim", args.embed_dim), ("depth", args.depth),
                                   ("num_heads", args.num_heads)) if v is not None}
    name = None if args.preset == "none" else args.preset
    torch.manual_seed(0)
    ours = build_dinov3(name, autocast_dtype=autocast_dtype, **overrides).to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)

    def run_ours() -> torch.Tensor:
        return ours.forward_features(images)["x_norm_patchtokens"]

    runs = {"ours": run_ours}
    if not args.no_hf:
        import transformers

        config = {k: v for k, v in hf_config_from_model(ours).items() if k not in ("model_type", "architectures")}
        hf_config = transformers.DINOv3ViTConfig(**config, attn_implementation="sdpa")
        hf_model = transformers.DINOv3ViTModel(hf_config).eval()
        hf_model.load_state_dict(convert_to_hf_state_dict(ours.state_dict(), layer_prefix="model.layer."))
        hf_model.requires_grad_(False).to(device)
        num_prefix = 1 + ours.n_storage_tokens

        def run_hf() -> torch.Tensor:
            context = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
                       else contextlib.nullcontext())
            with torch.no_grad(), context:
                return hf_model(images).last_hidden_state[:, num_prefix:]

        runs["transformers"] = run_hf

    outputs = {label: fn().float() for label, fn in runs.items()}
    print(f"preset={args.preset} {overrides or ''} batch={args.batch} size={args.size} dtype={args.dtype} "
          f"device={device}")
    rows = []
    for label, fn in runs.items():
        meter = MemoryMeter(device)
        meter.start()
        ms = statistics.mean(time_ms(fn, device=device, warmup=args.warmup, iters=args.iters))
        peak = meter.stop()
        diff = (outputs[label] - outputs["ours"]).abs().max().item()
        rows.append([label, f"{args.batch * 1e3 / ms:.1f}", f"{ms:.2f}", peak.cell(), f"{diff:.2e}"])
    print(markdown_table(["impl", "images/s", "ms/iter", "peak MiB", "max abs diff vs ours"], rows))


if __name__ == "__main__":
    main()

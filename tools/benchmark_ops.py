#!/usr/bin/env python3
"""Benchmark the multi-scale deformable attention op: compiled vs PyTorch reference.

Prints a Markdown table: implementation x shape -> forward ms, forward+backward ms, peak memory.

Shapes follow the model at a given input size (see docs/benchmarks.md):
  pixel-decoder: Q = S = (H/8 * W/8) + (H/16 * W/16) + (H/32 * W/32), 8 heads x 32 ch, 3 levels, 4 points
  adapter-extractor: Q = same token count, S = H/16 * W/16 (ViT tokens), 16 heads x 32 ch, 1 level, 4 points

Peak memory is measured honestly per device:
  cuda: torch.cuda.max_memory_allocated() during the runs minus the memory held before them.
  cpu:  growth of the process's peak resident set size (VmHWM, reset through
        /proc/self/clear_refs after a warm-up call) over the resident size before the runs, in a
        fresh process per row started with a fixed glibc mmap threshold, so freed tensor memory
        goes back to the OS and cannot hide later allocations. Includes allocator overhead.

Example:
    python tools/benchmark_ops.py --scale small --device cpu
    python tools/benchmark_ops.py --scale full --device cuda --dtype bfloat16
"""
import argparse
import multiprocessing
import os
import statistics
import time
from typing import List, NamedTuple

import torch

# presets of --scale: (input side in pixels, batch size)
SCALES = {"small": (128, 2), "full": (512, 16)}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
KIB_PER_MIB = 1024
# glibc: serve every allocation above 128 KiB with mmap (returned to the OS on free) so the
# resident-set peak reflects live tensors; set for the worker processes only
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


class OpShape(NamedTuple):
    name: str
    batch: int
    queries: int
    heads: int
    channels: int
    levels: List[tuple]  # (H, W) per level
    points: int


def model_shapes(input_size: int, batch: int) -> List[OpShape]:
    """The op's shapes in the pixel decoder and in an adapter extractor for a square input."""
    pyramid = [(input_size // s, input_size // s) for s in (8, 16, 32)]
    tokens = sum(h * w for h, w in pyramid)
    vit = (input_size // 16, input_size // 16)
    return [
        OpShape("pixel-decoder", batch, tokens, 8, 32, pyramid, 4),
        OpShape("adapter-extractor", batch, tokens, 16, 32, [vit], 4),
    ]


def make_inputs(shape: OpShape, device: str, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor(shape.levels, dtype=torch.int64)  # [L, 2]
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])  # [L]
    num_levels = len(shape.levels)
    value = torch.randn(shape.batch, int(areas.sum()), shape.heads, shape.channels, generator=gen)
    locations = torch.rand(shape.batch, shape.queries, shape.heads, num_levels, shape.points, 2, generator=gen)
    weights = torch.rand(shape.batch, shape.queries, shape.heads, num_levels * shape.points, generator=gen)
    weights = weights.softmax(-1).view(shape.batch, shape.queries, shape.heads, num_levels, shape.points)
    return (
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        locations.to(device, dtype),
        weights.to(device, dtype),
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _median_ms(fn, device: str, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / KIB_PER_MIB  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field} (CPU memory needs Linux)")


def _reset_peak_memory(device: str) -> float:
    """Reset the peak-memory counter; returns the memory in use now (MiB)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    return _proc_status_mib("VmRSS")


def _peak_memory(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mib("VmHWM")


def build_runs(impl: str, shape: OpShape, device: str, dtype_name: str):
    """Returns (forward, forward_backward) closures over random inputs of ``shape``."""
    from dinov3_m2f.layers import ms_deform_attn

    value, shapes, starts, locations, weights = make_inputs(shape, device, DTYPES[dtype_name])
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    grad_output = torch.randn(
        shape.batch, shape.queries, shape.heads * shape.channels, device=device, dtype=value.dtype
    )

    def forward():
        with torch.no_grad():
            ms_deform_attn(value, shapes, starts, locations, weights, impl=impl)

    def forward_backward():
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], impl=impl)
        torch.autograd.backward(out, grad_output)
        for leaf in leaves:
            leaf.grad = None

    return forward, forward_backward


def measure_time(impl: str, shape: OpShape, device: str, dtype_name: str, warmup: int, iters: int):
    """Median forward and forward+backward milliseconds."""
    forward, forward_backward = build_runs(impl, shape, device, dtype_name)
    return _median_ms(forward, device, warmup, iters), _median_ms(forward_backward, device, warmup, iters)


def measure_peak_memory(impl: str, shape: OpShape, device: str, dtype_name: str, threads: int) -> float:
    """Peak extra memory (MiB) of forward+backward over the memory held by its inputs."""
    torch.set_num_threads(threads)
    forward, forward_backward = build_runs(impl, shape, device, dtype_name)
    # one-time costs (thread pools, lazy initialisation) stay out of the figure
    forward_backward()
    _sync(device)
    base = _reset_peak_memory(device)
    forward()
    forward_backward()
    _sync(device)
    return _peak_memory(device) - base


def _memory_worker(queue, *args) -> None:
    queue.put(measure_peak_memory(*args))


def measure_peak_memory_in_fresh_process(*args) -> float:
    """Run :func:`measure_peak_memory` in a new process (see MALLOC_ENV) for a clean slate."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(queue, *args))
    saved_env = dict(os.environ)
    os.environ.update(MALLOC_ENV)  # inherited by the spawned worker only
    try:
        proc.start()
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"memory worker for {args[:2]} exited with code {proc.exitcode}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full",
                        help="preset input size and batch: small = 128 px x 2, full = 512 px x 16")
    parser.add_argument("--input-size", type=int, help="square input side in pixels (overrides --scale)")
    parser.add_argument("--batch-size", type=int, help="batch size (overrides --scale)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--impls", nargs="+", default=["compiled", "pytorch"], choices=["compiled", "pytorch"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    input_size, batch = SCALES[args.scale]
    input_size = args.input_size or input_size
    batch = args.batch_size or batch
    shapes = model_shapes(input_size, batch)
    memory_note = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS growth"
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, "
          f"input {input_size}x{input_size}, batch {batch}, {torch.get_num_threads()} threads")
    print()
    print(f"| impl | shape | B | Q | S | heads x C | L | P | fwd ms | fwd+bwd ms | peak MiB ({memory_note}) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        num_values = sum(h * w for h, w in shape.levels)
        for impl in args.impls:
            fwd_ms, fwd_bwd_ms = measure_time(impl, shape, args.device, args.dtype, args.warmup, args.iters)
            peak_mib = measure_peak_memory_in_fresh_process(
                impl, shape, args.device, args.dtype, torch.get_num_threads()
            )
            print(f"| {impl} | {shape.name} | {shape.batch} | {shape.queries} | {num_values} | "
                  f"{shape.heads} x {shape.channels} | {len(shape.levels)} | {shape.points} | "
                  f"{fwd_ms:.2f} | {fwd_bwd_ms:.2f} | {peak_mib:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""The multi-scale deformable attention op: compiled vs PyTorch reference (vs the original
Deformable-DETR kernel, when one is given).

Prints a Markdown table: implementation x shape -> forward ms, backward ms, forward+backward ms,
peak memory (median of ``--iters`` calls after ``--warmup`` calls; the implementations take turns
call by call; CUDA calls are timed with CUDA events). Forward runs under ``no_grad``; backward is
the backward pass alone (value, sampling locations and attention weights) over a retained forward
graph; fwd+bwd is both.

Shapes follow the model at a given input size (see docs/benchmarks.md):
  pixel-decoder: Q = S = (H/8 * W/8) + (H/16 * W/16) + (H/32 * W/32), 8 heads x 32 ch, 3 levels, 4 points
  adapter-extractor: Q = same token count, S = H/16 * W/16 (ViT tokens), 16 heads x 32 ch, 1 level, 4 points

Implementations (``--impls``):
  compiled  dinov3_m2f._C (impl="compiled")
  pytorch   the grid_sample reference (impl="pytorch")
  baseline  the original Deformable-DETR / Mask2Former ``MultiScaleDeformableAttention`` extension,
            built outside this repository; ``--baseline-ext DIR`` names the folder that holds the
            built module (``MultiScaleDeformableAttention*.so``). Its kernels take float32 (and
            float64) CUDA tensors only.

Peak memory is the extra memory of one forward + one forward/backward over what fresh inputs
already hold, measured after all timed runs:
  cuda: torch.cuda.max_memory_allocated() minus the memory allocated before.
  cpu:  growth of the peak resident set size (VmHWM, reset through /proc/self/clear_refs) over the
        resident size before, in one fresh process started with glibc's mmap threshold fixed at
        128 KiB, so that freed tensors return to the OS and cannot hide later allocations.
        Includes allocator overhead.

Example:
    python dev/benchmark.py ops --scale small --device cpu
    python dev/benchmark.py ops --scale full --device cuda --dtype bfloat16
    python dev/benchmark.py ops --device cuda --input-size 1024 --batch-size 16 \\
        --impls compiled pytorch baseline --baseline-ext /path/to/built/extension
"""
import importlib.machinery
import importlib.util
import multiprocessing
import os
from types import ModuleType
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from dinov3_m2f.benchmarking import DTYPES, MemoryMeter, markdown_table, time_alternating, write_records
from dinov3_m2f.layers import ms_deform_attn

from . import common

# presets of --scale: (input side in pixels, batch size)
SCALES = {"small": (128, 2), "full": (512, 16)}
IMPLS = ("compiled", "pytorch", "baseline")
BASELINE_MODULE = "MultiScaleDeformableAttention"
# im2col_step of the original op (Deformable-DETR's default); it splits the batch into chunks of
# this many images, so with batch <= 64 the whole batch is one chunk.
BASELINE_IM2COL_STEP = 64
# The original kernels dispatch on float32 and float64 only.
BASELINE_DTYPES = (torch.float32, torch.float64)
# glibc: serve every allocation above 128 KiB with mmap (returned to the OS on free) so the
# resident-set peak reflects live tensors; set for the CPU memory worker process only
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# Prefix of the table cell of an implementation that --skip-unsupported left out.
UNSUPPORTED = "not supported"

OpFn = Callable[..., torch.Tensor]


class OpShape(NamedTuple):
    name: str
    batch: int
    queries: int
    heads: int
    channels: int
    levels: List[tuple]  # (H, W) per level
    points: int


# (impl, shape, dtype name) of a peak-memory measurement
MemoryCase = Tuple[str, OpShape, str]


def model_shapes(input_size: int, batch: int) -> List[OpShape]:
    """The op's shapes in the pixel decoder and in an adapter extractor for a square input."""
    pyramid = [(input_size // s, input_size // s) for s in (8, 16, 32)]
    tokens = sum(h * w for h, w in pyramid)
    vit = (input_size // 16, input_size // 16)
    return [
        OpShape("pixel-decoder", batch, tokens, 8, 32, pyramid, 4),
        OpShape("adapter-extractor", batch, tokens, 16, 32, [vit], 4),
    ]


def make_inputs(shape: OpShape, device: torch.device, dtype: torch.dtype):
    """Random inputs drawn on ``device`` (value, spatial shapes, level starts, locations, weights)."""
    gen = torch.Generator(device=device).manual_seed(0)
    spatial_shapes = torch.tensor(shape.levels, dtype=torch.int64, device=device)  # [L, 2]
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])  # [L]
    num_levels = len(shape.levels)
    value = torch.randn(shape.batch, int(areas.sum()), shape.heads, shape.channels, generator=gen,
                        device=device)
    locations = torch.rand(shape.batch, shape.queries, shape.heads, num_levels, shape.points, 2,
                           generator=gen, device=device)
    weights = torch.rand(shape.batch, shape.queries, shape.heads, num_levels * shape.points,
                         generator=gen, device=device)
    weights = weights.softmax(-1).view(shape.batch, shape.queries, shape.heads, num_levels, shape.points)
    return value.to(dtype), spatial_shapes, level_start_index, locations.to(dtype), weights.to(dtype)


def load_baseline(folder: str) -> ModuleType:
    """Import the original ``MultiScaleDeformableAttention`` extension from ``folder``.

    Raises:
        FileNotFoundError: ``folder`` holds no such module.
        AttributeError: the module lacks ``ms_deform_attn_forward`` / ``ms_deform_attn_backward``.
    """
    spec = importlib.machinery.PathFinder.find_spec(BASELINE_MODULE, [folder])
    if spec is None:
        raise FileNotFoundError(
            f"--baseline-ext {folder}: no {BASELINE_MODULE} module (e.g. {BASELINE_MODULE}*.so) "
            "in that folder; give the folder the original extension was built into"
        )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("ms_deform_attn_forward", "ms_deform_attn_backward"):
        if not hasattr(module, name):
            raise AttributeError(f"--baseline-ext {folder}: {spec.origin} has no {name}()")
    return module


class _BaselineFunction(torch.autograd.Function):
    """Autograd wrapper of the original extension's forward / backward (its im2col API)."""

    @staticmethod
    def forward(ctx, ext, value, spatial_shapes, level_start_index, locations, weights):
        ctx.ext = ext
        ctx.save_for_backward(value, spatial_shapes, level_start_index, locations, weights)
        return ext.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, locations, weights, BASELINE_IM2COL_STEP
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_value, grad_locations, grad_weights = ctx.ext.ms_deform_attn_backward(
            *ctx.saved_tensors, grad_output.contiguous(), BASELINE_IM2COL_STEP
        )
        return None, grad_value, None, None, grad_locations, grad_weights


def op_function(impl: str, baseline: Optional[ModuleType]) -> OpFn:
    """``f(value, spatial_shapes, level_start_index, locations, weights) -> output`` of ``impl``."""
    if impl == "baseline":
        if baseline is None:
            raise ValueError("impl 'baseline' needs --baseline-ext")
        return lambda *inputs: _BaselineFunction.apply(baseline, *inputs)
    return lambda *inputs: ms_deform_attn(*inputs, impl=impl)


def build_runs(op: OpFn, shape: OpShape, device: torch.device, dtype: torch.dtype) -> Dict[str, Callable]:
    """Closures over random inputs of ``shape``: ``forward``, ``backward`` (over a forward graph
    made at its first call and then retained) and ``forward_backward``."""
    value, shapes, starts, locations, weights = make_inputs(shape, device, dtype)
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    grad_output = torch.randn(shape.batch, shape.queries, shape.heads * shape.channels, device=device,
                              dtype=dtype)
    graph = []

    def clear_grads():
        for leaf in leaves:
            leaf.grad = None

    def forward():
        with torch.no_grad():
            op(value, shapes, starts, locations, weights)

    def backward():
        if not graph:
            graph.append(op(leaves[0], shapes, starts, leaves[1], leaves[2]))
        torch.autograd.backward(graph[0], grad_output, retain_graph=True)
        clear_grads()

    def forward_backward():
        out = op(leaves[0], shapes, starts, leaves[1], leaves[2])
        torch.autograd.backward(out, grad_output)
        clear_grads()

    return {"forward": forward, "backward": backward, "forward_backward": forward_backward}


def measure_peak_memory(runs: Dict[str, Callable], device: torch.device) -> float:
    """Peak extra memory (MiB) of one forward and one forward+backward over the inputs."""
    runs["forward_backward"]()  # one-time costs (thread pools, lazy initialisation) stay out
    meter = MemoryMeter(device)
    meter.start()
    runs["forward"]()
    runs["forward_backward"]()
    return meter.stop().growth_mib


def measure_all_peak_memory(cases: List[MemoryCase], device: torch.device,
                            baseline_dir: Optional[str]) -> List[float]:
    """:func:`measure_peak_memory` of each case, on fresh inputs, one case after the other."""
    baseline = load_baseline(baseline_dir) if baseline_dir else None
    return [measure_peak_memory(build_runs(op_function(impl, baseline), shape, device, DTYPES[dtype]),
                                device)
            for impl, shape, dtype in cases]


def measure_cpu_peak_memory_in_fresh_process(cases: List[MemoryCase], baseline_dir: Optional[str],
                                             threads: int) -> List[float]:
    """Run :func:`measure_all_peak_memory` on the CPU in a new process started with
    :data:`MALLOC_ENV`, so that the timed runs' allocations and this process' malloc settings
    cannot hide any case's memory."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_memory_worker, args=(queue, cases, baseline_dir, threads))
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
        raise RuntimeError(f"CPU memory worker exited with code {proc.exitcode}")
    return result


def _cpu_memory_worker(queue, cases, baseline_dir, threads) -> None:
    torch.set_num_threads(threads)
    queue.put(measure_all_peak_memory(cases, torch.device("cpu"), baseline_dir))


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = common.make_parser("ops", __doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full",
                        help="preset input size and batch: small = 128 px x 2, full = 512 px x 16")
    parser.add_argument("--input-size", type=int, help="square input side in pixels (overrides --scale)")
    parser.add_argument("--batch-size", type=int, help="batch size (overrides --scale)")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float32"],
                        help="one or more I/O dtypes")
    parser.add_argument("--impls", nargs="+", default=["compiled", "pytorch"], choices=IMPLS)
    parser.add_argument("--baseline-ext", metavar="DIR",
                        help="folder holding the built original MultiScaleDeformableAttention extension")
    parser.add_argument("--skip-unsupported", action="store_true",
                        help="report an implementation that rejects the dtype on this device as "
                             f"'{UNSUPPORTED}' instead of failing (quick CPU checks)")
    common.add_run_options(parser, warmup=2, iters=20)
    args = common.parse(parser, argv, positive=["input_size", "batch_size"])
    if ("baseline" in args.impls) != (args.baseline_ext is not None):
        parser.error("--impls baseline and --baseline-ext DIR go together")
    return args


def measure_case(impls: Sequence[str], shape: OpShape, dtype: torch.dtype, *, device: torch.device,
                 baseline: Optional[ModuleType], args) -> Dict[str, Dict]:
    """Median ms of forward, backward and forward+backward of every implementation, taking turns
    call by call; an implementation that rejects ``dtype`` gets an ``error`` (with
    ``--skip-unsupported``)."""
    results: Dict[str, Dict] = {impl: {} for impl in impls}
    runs = {}
    for impl in impls:
        impl_runs = build_runs(op_function(impl, baseline), shape, device, dtype)
        try:
            impl_runs["forward"]()  # an implementation rejects a dtype at its first call
        except RuntimeError as exc:
            if not args.skip_unsupported:
                raise
            results[impl]["error"] = f"{UNSUPPORTED}: {str(exc).splitlines()[0]}"
            continue
        runs[impl] = impl_runs
    for name in ("forward", "backward", "forward_backward"):
        timings = time_alternating({impl: impl_runs[name] for impl, impl_runs in runs.items()}, device=device,
                                   warmup=args.warmup, iters=args.iters)
        for impl, timing in timings.items():
            results[impl][f"{name}_ms"] = timing.median_ms
    return results  # the runs (and the graphs "backward" retained) are freed here


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = common.start(args)
    baseline = load_baseline(args.baseline_ext) if args.baseline_ext else None
    input_size, batch = SCALES[args.scale]
    input_size = args.input_size or input_size
    batch = args.batch_size or batch
    memory_note = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS growth"
    first = common.row_start(args, device)
    print(f"{first['date']}, {first['machine']}, torch {first['torch']}, device {device}, "
          f"input {input_size}x{input_size}, batch {batch}, {torch.get_num_threads()} threads")

    records, measured, cases = [], [], []
    for dtype_name in args.dtype:
        dtype = DTYPES[dtype_name]
        for shape in model_shapes(input_size, batch):
            # the original kernels take float32 / float64 only (said once below the table)
            impls = [impl for impl in args.impls if impl != "baseline" or dtype in BASELINE_DTYPES]
            results = measure_case(impls, shape, dtype, device=device, baseline=baseline, args=args)
            for impl in impls:
                record = dict(first, impl=impl, shape=shape.name, input_size=input_size, dtype=dtype_name,
                              batch=shape.batch, queries=shape.queries,
                              values=sum(h * w for h, w in shape.levels), heads=shape.heads,
                              channels=shape.channels, levels=len(shape.levels), points=shape.points,
                              device=str(device), **results[impl])
                records.append(record)
                if "error" not in record:
                    measured.append(record)
                    cases.append((impl, shape, dtype_name))
            write_records(args.json, records)
    # Memory after all timed runs, each case on fresh inputs.
    if device.type == "cpu":
        peaks = measure_cpu_peak_memory_in_fresh_process(cases, args.baseline_ext, torch.get_num_threads())
    else:
        peaks = measure_all_peak_memory(cases, device, args.baseline_ext)
    for record, peak in zip(measured, peaks):
        record["peak_mib"] = peak
    write_records(args.json, records)

    def cell(record, key, fmt):
        return format(record[key], fmt) if key in record else record["error"]

    print()
    print(markdown_table(
        ["impl", "dtype", "shape", "B", "Q", "S", "heads x C", "L", "P", "fwd ms", "bwd ms", "fwd+bwd ms",
         f"peak MiB ({memory_note})"],
        ([r["impl"], r["dtype"], r["shape"], r["batch"], r["queries"], r["values"],
          f"{r['heads']} x {r['channels']}", r["levels"], r["points"], cell(r, "forward_ms", ".3f"),
          cell(r, "backward_ms", ".3f"), cell(r, "forward_backward_ms", ".3f"), cell(r, "peak_mib", ".1f")]
         for r in records),
    ))
    if "baseline" in args.impls and any(DTYPES[name] not in BASELINE_DTYPES for name in args.dtype):
        print("\nbaseline: float32 / float64 rows only (the original kernels take no other dtype)")
    return 0


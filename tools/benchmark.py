#!/usr/bin/env python3
"""Benchmark a config's model: training step time, inference throughput and peak memory.

Random inputs of ``--input-size`` (uint8 images, random labels), so no dataset is needed.

    train ms/iter   one full training step as tools/train_net.py runs it (forward, loss, backward,
                    gradient clipping from train.clip_grad, optimizer step from cfg.optimizer),
                    averaged over ``--iters`` steps after ``--warmup`` steps that are not timed
    infer img/s     images per second of inference in the model's test mode (batches of
                    ``--batch-size`` images), after ``--warmup`` untimed batches
    peak memory     CUDA: torch.cuda.max_memory_allocated (everything allocated, weights included).
                    CPU: growth of the process's peak resident set size (VmHWM) over the resident
                    size before the timed runs; includes allocator overhead and excludes what
                    was already resident (weights). The cell says which one it is.

Prints a markdown table (header + one row) for docs/benchmarks.md.

Examples:
    python tools/benchmark.py --config-file configs/synthetic/m2f_tiny_synthetic.py \
        --device cpu --batch-size 2 --input-size 128 128 --amp none
    python tools/benchmark.py --config-file configs/loveda/m2f_vitl16_sat493m_512.py \
        --device cuda --batch-size 8 --amp bf16 --opts model.backbone.weights=null
"""
import argparse
import datetime
import itertools
import logging
import os
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import instantiate
from detectron2.engine import HookBase
from omegaconf import DictConfig
from torch import nn

from dinov3_m2f.d2.trainer import AMP_DTYPES, SegTrainer, resolve_device
from dinov3_m2f.d2.config import load_config

logger = logging.getLogger(__name__)

AMP_CHOICES = {"bf16": "bfloat16", "fp16": "float16", "none": None}
MIB = 2**20
KIB = 2**10
_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = "5"  # written to clear_refs: VmHWM := current resident size


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig file")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<i>")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step / batch")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=(512, 512))
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    parser.add_argument("--amp", choices=sorted(AMP_CHOICES), default="none",
                        help="autocast dtype for training and inference")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's choice)")
    parser.add_argument("--skip-train", action="store_true", help="inference only")
    parser.add_argument("--date", default=None, help="date in the table row (default: today)")
    parser.add_argument("--machine", default=None,
                        help="machine description in the table row (default: from the system)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides key=value (last option)")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--iters and --batch-size must be >= 1, --warmup >= 0")
    return args


def describe_machine(device: torch.device) -> str:
    """E.g. ``"2-core x86_64 CPU, no GPU"`` or ``"NVIDIA H200 (1 GPU), 16-core x86_64 CPU"``."""
    cpu = f"{os.cpu_count()}-core {platform.machine()} CPU"
    if device.type != "cuda":
        return f"{cpu}, no GPU" if not torch.cuda.is_available() else cpu
    return f"{torch.cuda.get_device_name(device)}, {cpu}"


class _MemoryMeter:
    """Peak memory during a block: CUDA max allocated, or CPU peak RSS growth."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def _proc_kib(field: str) -> int:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"{_PROC_STATUS} has no {field}")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with open(_CLEAR_REFS, "w") as f:
            f.write(_RESET_PEAK_RSS)
        self._rss_before_kib = self._proc_kib("VmRSS")

    def stop(self) -> str:
        """The peak as a table cell, naming what was measured."""
        if self.device.type == "cuda":
            return f"{torch.cuda.max_memory_allocated(self.device) / MIB:.0f} (CUDA max allocated)"
        growth = (self._proc_kib("VmHWM") - self._rss_before_kib) * KIB
        return f"{growth / MIB:.0f} (CPU peak RSS growth)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(
    *, batch_size: int, input_size: Tuple[int, int], num_classes: int, with_labels: bool,
    generator: torch.Generator,
) -> List[Dict]:
    """Detectron2 input dicts with random uint8 images (and random labels)."""
    batch = []
    for _ in range(batch_size):
        item = {
            "image": torch.randint(0, 256, (3, *input_size), dtype=torch.uint8,
                                   generator=generator),  # [3, H, W]
        }
        if with_labels:
            item["sem_seg"] = torch.randint(0, num_classes, input_size, generator=generator)
        batch.append(item)
    return batch


class _StepTimer(HookBase):
    """Records the wall time of each training step (device synchronized)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: List[float] = []

    def before_step(self) -> None:
        _sync(self.device)
        self._start = time.perf_counter()

    def after_step(self) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter() - self._start)


class _MeterHook(HookBase):
    """Starts the memory meter before the first timed step."""

    def __init__(self, meter: _MemoryMeter, *, start_iter: int):
        self.meter = meter
        self.start_iter = start_iter

    def before_step(self) -> None:
        if self.trainer.iter == self.start_iter:
            self.meter.start()


def benchmark_train(
    cfg: DictConfig, model: nn.Module, batch: List[Dict], *, device: torch.device,
    amp_dtype: Optional[str], warmup: int, iters: int,
) -> Tuple[float, str]:
    """Mean ms per training step after ``warmup`` steps, and the peak memory cell."""
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    clip = cfg.train.clip_grad
    trainer = SegTrainer(
        model, itertools.repeat(batch), optimizer, device=device, amp_dtype=amp_dtype,
        clip_grad_max_norm=clip.max_norm if clip.enabled else 0.0,
        clip_grad_norm_type=clip.norm_type,
    )
    timer = _StepTimer(device)
    meter = _MemoryMeter(device)
    trainer.register_hooks([_MeterHook(meter, start_iter=warmup), timer])
    trainer.train(0, warmup + iters)
    timed = timer.times[warmup:]
    return 1000.0 * sum(timed) / len(timed), meter.stop()


def benchmark_inference(
    model: nn.Module, batch: List[Dict], *, device: torch.device,
    amp_dtype: Optional[torch.dtype], warmup: int, iters: int,
) -> Tuple[float, str]:
    """Images per second after ``warmup`` untimed batches, and the peak memory cell."""
    model.eval()
    meter = _MemoryMeter(device)
    with torch.inference_mode(), torch.autocast(
        device.type, dtype=amp_dtype, enabled=amp_dtype is not None
    ):
        for _ in range(warmup):
            model(batch)
        meter.start()
        start = time.perf_counter()
        for _ in range(iters):
            model(batch)
        _sync(device)
        elapsed = time.perf_counter() - start
    return len(batch) * iters / elapsed, meter.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = load_config(args.config_file, overrides=args.opts)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device)
    amp_name = AMP_CHOICES[args.amp]
    amp_dtype = AMP_DTYPES[amp_name] if amp_name else None
    generator = torch.Generator().manual_seed(0)
    batch_kwargs = dict(batch_size=args.batch_size, input_size=tuple(args.input_size),
                        num_classes=model.num_classes, generator=generator)

    train_ms, train_mem = "skipped", "skipped"
    if not args.skip_train:
        batch = random_batch(with_labels=True, **batch_kwargs)
        ms, train_mem = benchmark_train(cfg, model, batch, device=device, amp_dtype=amp_name,
                                        warmup=args.warmup, iters=args.iters)
        train_ms = f"{ms:.1f}"
    batch = random_batch(with_labels=False, **batch_kwargs)
    images_per_s, infer_mem = benchmark_inference(
        model, batch, device=device, amp_dtype=amp_dtype, warmup=args.warmup, iters=args.iters
    )

    date = args.date or datetime.date.today().isoformat()
    machine = args.machine or describe_machine(device)
    height, width = args.input_size
    print("| date | machine | torch | config | device | threads | amp | batch | input | "
          "train ms/iter | infer img/s | train peak MiB | infer peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {date} | {machine} | {torch.__version__} | {os.path.basename(args.config_file)} "
          f"| {device.type} | {torch.get_num_threads()} | {args.amp} | {args.batch_size} "
          f"| {height}x{width} | {train_ms} | {images_per_s:.2f} | {train_mem} | {infer_mem} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

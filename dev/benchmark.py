#!/usr/bin/env python3
"""Benchmark a config's model: training step time, inference throughput and peak memory.

Random inputs of ``--input-size`` (uint8 images; label maps with a few classes per image, see
``dinov3_m2f.benchmarking.random_label_maps``), so no dataset is needed.

    train ms/iter   one full training step as tools/train_net.py runs it (forward, loss, backward,
                    gradient clipping from train.clip_grad, optimizer step from cfg.optimizer),
                    averaged over ``--iters`` steps after ``--warmup`` steps that are not timed
    infer img/s     images per second of inference in the model's test mode (batches of
                    ``--batch-size`` images), after ``--warmup`` untimed batches
    peak memory     CUDA: torch.cuda.max_memory_allocated (everything allocated, weights included).
                    CPU: growth of the process's peak resident set size (VmHWM) over the resident
                    size before the timed runs (memory freed earlier is first given back to the
                    OS); includes allocator overhead and excludes what was already resident
                    (weights). The cell says which one it is.

Prints a markdown table (header + one row) for docs/benchmarks.md; ``--json PATH`` also writes the
figures as JSON records (dev/gpu_check.py reads them).

Examples:
    python dev/benchmark.py --config-file configs/synthetic/m2f_tiny_synthetic.py \
        --device cpu --batch-size 2 --input-size 128 128 --amp none
    python dev/benchmark.py --config-file configs/loveda/m2f_vitl16_sat493m_512.py \
        --device cuda --batch-size 8 --amp bf16 --opts model.backbone.weights=null
"""
import argparse
import datetime
import itertools
import logging
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import instantiate
from detectron2.engine import HookBase
from omegaconf import DictConfig
from torch import nn

from dinov3_m2f.benchmarking import (
    MemoryMeter,
    MemoryPeak,
    describe_machine,
    markdown_table,
    random_label_maps,
    synchronize,
    time_ms,
    write_records,
)
from dinov3_m2f.config_schema import AMP_DTYPES
from dinov3_m2f.d2.trainer import SegTrainer, resolve_device
from dinov3_m2f.d2.config import load_config
from dinov3_m2f.modeling.torch_compile import compile_parts

AMP_CHOICES = {"bf16": "bfloat16", "fp16": "float16", "none": None}


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
    parser.add_argument("--json", metavar="PATH", help="also write the figures as a JSON record")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides key=value (last option)")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--iters and --batch-size must be >= 1, --warmup >= 0")
    return args


def random_batch(
    *, batch_size: int, input_size: Tuple[int, int], num_classes: int, with_labels: bool,
    generator: torch.Generator,
) -> List[Dict]:
    """Detectron2 input dicts with random uint8 images (and random label maps)."""
    batch = [
        {"image": torch.randint(0, 256, (3, *input_size), dtype=torch.uint8, generator=generator)}
        for _ in range(batch_size)
    ]  # each image [3, H, W]
    if with_labels:
        labels = random_label_maps(batch_size=batch_size, size=input_size, num_classes=num_classes,
                                   generator=generator)  # [B, H, W]
        for item, label in zip(batch, labels):
            item["sem_seg"] = label
    return batch


class _StepTimer(HookBase):
    """Records the wall time of each training step (device synchronized)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: List[float] = []

    def before_step(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def after_step(self) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter() - self._start)


class _MeterHook(HookBase):
    """Starts the memory meter before the first timed step."""

    def __init__(self, meter: MemoryMeter, *, start_iter: int):
        self.meter = meter
        self.start_iter = start_iter

    def before_step(self) -> None:
        if self.trainer.iter == self.start_iter:
            self.meter.start()


def benchmark_train(
    cfg: DictConfig, model: nn.Module, batch: List[Dict], *, device: torch.device,
    amp_dtype: Optional[str], warmup: int, iters: int,
) -> Tuple[float, MemoryPeak]:
    """Mean ms per training step after ``warmup`` steps, and the peak memory."""
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
    meter = MemoryMeter(device)
    trainer.register_hooks([_MeterHook(meter, start_iter=warmup), timer])
    trainer.train(0, warmup + iters)
    timed = timer.times[warmup:]
    return 1000.0 * sum(timed) / len(timed), meter.stop()


def benchmark_inference(
    model: nn.Module, batch: List[Dict], *, device: torch.device,
    amp_dtype: Optional[torch.dtype], warmup: int, iters: int,
) -> Tuple[float, MemoryPeak]:
    """Images per second after ``warmup`` untimed batches, and the peak memory."""
    model.eval()
    meter = MemoryMeter(device)
    with torch.inference_mode(), torch.autocast(
        device.type, dtype=amp_dtype, enabled=amp_dtype is not None
    ):
        for _ in range(warmup):
            model(batch)
        meter.start()
        times = time_ms(lambda: model(batch), device=device, warmup=0, iters=iters)
    return len(batch) * 1e3 / statistics.mean(times), meter.stop()


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
    compile_parts(model, cfg.train.compile)
    amp_name = AMP_CHOICES[args.amp]
    amp_dtype = AMP_DTYPES[amp_name] if amp_name else None
    generator = torch.Generator().manual_seed(0)
    batch_kwargs = dict(batch_size=args.batch_size, input_size=tuple(args.input_size),
                        num_classes=model.num_classes, generator=generator)

    record = dict(date=args.date or datetime.date.today().isoformat(),
                  machine=args.machine or describe_machine(device), torch=torch.__version__,
                  config=" ".join([os.path.basename(args.config_file), *args.opts]), device=device.type,
                  frozen_dtype=cfg.model.backbone.get("vit_dtype", "float32"),
                  threads=torch.get_num_threads(), amp=args.amp, batch=args.batch_size,
                  input="{}x{}".format(*args.input_size))
    train_cells = ["skipped", "skipped"]
    if not args.skip_train:
        batch = random_batch(with_labels=True, **batch_kwargs)
        ms, peak = benchmark_train(cfg, model, batch, device=device, amp_dtype=amp_name,
                                   warmup=args.warmup, iters=args.iters)
        record.update(train_ms_per_iter=ms, train_peak_mib=peak.peak_mib,
                      train_reserved_mib=peak.reserved_mib)
        train_cells = [f"{ms:.1f}", peak.cell()]
    batch = random_batch(with_labels=False, **batch_kwargs)
    images_per_s, peak = benchmark_inference(
        model, batch, device=device, amp_dtype=amp_dtype, warmup=args.warmup, iters=args.iters
    )
    record.update(infer_images_per_s=images_per_s, infer_peak_mib=peak.peak_mib,
                  infer_reserved_mib=peak.reserved_mib)
    write_records(args.json, [record])

    header = ["date", "machine", "torch", "config", "device", "threads", "amp", "batch", "input"]
    print(markdown_table(
        header + ["train ms/iter", "infer img/s", "train peak MiB", "infer peak MiB"],
        [[record[key] for key in header]
         + [train_cells[0], f"{images_per_s:.2f}", train_cells[1], peak.cell()]],
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A config's model through detectron2: training step time, inference throughput and peak memory.

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

Prints a markdown table (header + one row) for docs/benchmarks.md.

Examples:
    python dev/benchmark.py config --config-file configs/synthetic/m2f_tiny_synthetic.py \\
        --device cpu --batch-size 2 --input-size 128 128 --amp none
    python dev/benchmark.py config --config-file configs/loveda/m2f_vitl16_sat493m_512.py \\
        --device cuda --batch-size 8 --amp bf16 --opts model.backbone.weights=null
"""
import argparse
import itertools
import os
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import dinov3_m2f.d2  # noqa: F401  before detectron2: imports it without its import-time warnings
from detectron2.config import instantiate
from detectron2.engine import HookBase
from omegaconf import DictConfig
from torch import nn

from dinov3_m2f.benchmarking import (
    AMP_FLAGS,
    MemoryMeter,
    MemoryPeak,
    autocast,
    markdown_table,
    random_label_maps,
    synchronize,
    time_ms,
    write_records,
)
from dinov3_m2f.d2.config import load_config
from dinov3_m2f.d2.trainer import SegTrainer
from dinov3_m2f.modeling.torch_compile import compile_parts

from . import common

# --amp flag -> the trainer's amp_dtype name (train.amp.dtype of the configs).
AMP_NAMES = {"bf16": "bfloat16", "fp16": "float16", "none": None}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = common.make_parser("config", __doc__)
    parser.add_argument("--config-file", required=True, help="LazyConfig file")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step / batch")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=(512, 512))
    parser.add_argument("--amp", choices=sorted(AMP_NAMES), default="none",
                        help="autocast dtype for training and inference")
    parser.add_argument("--skip-train", action="store_true", help="inference only")
    common.add_run_options(parser)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides key=value (last option)")
    return common.parse(parser, argv, positive=["batch_size"])


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
    """Records the wall time of each training step (device synchronized); starts the memory meter
    before the first timed step."""

    def __init__(self, device: torch.device, meter: MemoryMeter, *, start_iter: int):
        self.device = device
        self.meter = meter
        self.start_iter = start_iter
        self.times: List[float] = []

    def before_step(self) -> None:
        if self.trainer.iter == self.start_iter:
            self.meter.start()
        synchronize(self.device)
        self._start = time.perf_counter()

    def after_step(self) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter() - self._start)


def benchmark_train(
    cfg: DictConfig, model: nn.Module, batch: List[Dict], *, device: torch.device,
    amp_name: Optional[str], warmup: int, iters: int,
) -> Tuple[float, MemoryPeak]:
    """Mean ms per training step after ``warmup`` steps, and the peak memory."""
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    clip = cfg.train.clip_grad
    trainer = SegTrainer(
        model, itertools.repeat(batch), optimizer, device=device, amp_dtype=amp_name,
        clip_grad_max_norm=clip.max_norm if clip.enabled else 0.0,
        clip_grad_norm_type=clip.norm_type,
    )
    meter = MemoryMeter(device)
    timer = _StepTimer(device, meter, start_iter=warmup)
    trainer.register_hooks([timer])
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
    with torch.inference_mode(), autocast(device, amp_dtype):
        for _ in range(warmup):
            model(batch)
        meter.start()
        times = time_ms(lambda: model(batch), device=device, warmup=0, iters=iters)
    return len(batch) * 1e3 / statistics.mean(times), meter.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    args = parse_args(argv)
    device = common.start(args)
    cfg = load_config(args.config_file, overrides=args.opts)
    model = instantiate(cfg.model).to(device)
    compile_parts(model, cfg.train.compile)
    generator = torch.Generator().manual_seed(0)
    batch_kwargs = dict(batch_size=args.batch_size, input_size=tuple(args.input_size),
                        num_classes=model.num_classes, generator=generator)

    record = dict(common.row_start(args, device),
                  config=" ".join([os.path.basename(args.config_file), *args.opts]), device=device.type,
                  frozen_dtype=cfg.model.backbone.get("vit_dtype", "float32"),
                  threads=torch.get_num_threads(), amp=args.amp, batch=args.batch_size,
                  input="{}x{}".format(*args.input_size))
    train_cells = ["skipped", "skipped"]
    if not args.skip_train:
        batch = random_batch(with_labels=True, **batch_kwargs)
        ms, peak = benchmark_train(cfg, model, batch, device=device, amp_name=AMP_NAMES[args.amp],
                                   warmup=args.warmup, iters=args.iters)
        record.update(train_ms_per_iter=ms, train_peak_mib=peak.peak_mib,
                      train_reserved_mib=peak.reserved_mib)
        train_cells = [f"{ms:.1f}", peak.cell()]
    batch = random_batch(with_labels=False, **batch_kwargs)
    images_per_s, peak = benchmark_inference(
        model, batch, device=device, amp_dtype=AMP_FLAGS[args.amp], warmup=args.warmup, iters=args.iters
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

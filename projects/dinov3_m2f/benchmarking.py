"""Measuring helpers shared by the benchmarks (``dev/benchmark.py`` and its modes in
``dev/benchmarks/``, ``dev/gpu_check.py``, ``tools/export_model.py --benchmark``).

Device and dtype names, timed loops (contenders alternated call by call), peak memory, a
description of the machine with its load average, and the Markdown and JSON output the tools
print and write. Plain PyTorch: nothing here imports detectron2, so the
core-only tools run where detectron2 is not installed.
"""
import ctypes
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from .atomic_files import atomic_open
from .devices import parse_device  # the benchmarks' --device, as the tools and train.device

__all__ = [
    "AMP_FLAGS",
    "DTYPES",
    "MemoryMeter",
    "MemoryPeak",
    "Timings",
    "autocast",
    "describe_machine",
    "load_average",
    "markdown_table",
    "median_ms",
    "parse_device",
    "random_label_maps",
    "synchronize",
    "time_alternating",
    "time_ms",
    "write_records",
]

# Short and long names of the dtypes the tools accept (--dtype, --amp, ...).
DTYPES: Dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp64": torch.float64,
    "float64": torch.float64,
}
# --amp choices of the tools: the autocast dtype, or None for no autocast.
AMP_FLAGS: Dict[str, Optional[torch.dtype]] = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
MIB = 2**20
KIB = 2**10
_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = "5"  # written to clear_refs: VmHWM := current resident size
# Random label maps: classes per image (scene-parsing images show a handful, not all 150) and
# the side of the grid of constant-label blocks.
CLASSES_PER_IMAGE = 10
LABEL_GRID = 8


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> torch.autocast:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a disabled one for None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@dataclass
class Timings:
    """Durations of the timed calls of one contender, in ms.

    Attributes:
        ms: CUDA: device time of each call (a pair of CUDA events around it); CPU: host wall time.
        cpu_ms: process CPU time (all threads) of each call on the host; a busy shared machine
            disturbs it less than the wall time.
    """

    ms: List[float]
    cpu_ms: List[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms)

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_ms)


def time_alternating(
    contenders: Mapping[str, Callable[[], Any]], *, device: torch.device, warmup: int, iters: int
) -> Dict[str, Timings]:
    """Time contenders call by call in turn (A, B, A, B, ...), so that a change of the machine's
    load during the run hits all of them alike.

    On CUDA each call is timed with a pair of CUDA events on the current stream (device time,
    launch gaps included, no host synchronisation between calls); on CPU with the host clock.

    Args:
        contenders: name -> the work to time.
        device: where the work runs.
        warmup: untimed rounds first (lazy initialisation, autotuning, allocator growth).
        iters: timed rounds.

    Returns:
        name -> :class:`Timings` of its ``iters`` calls (take the median for a figure).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters} and {warmup}")
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    synchronize(device)
    events = {name: [] for name in contenders}
    timings = {name: Timings(ms=[], cpu_ms=[]) for name in contenders}
    for _ in range(iters):
        for name, fn in contenders.items():
            start_cpu = time.process_time()
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events[name].append((start, end))
            else:
                start_wall = time.perf_counter()
                fn()
                timings[name].ms.append((time.perf_counter() - start_wall) * 1e3)
            timings[name].cpu_ms.append((time.process_time() - start_cpu) * 1e3)
    synchronize(device)
    for name, pairs in events.items():
        timings[name].ms.extend(start.elapsed_time(end) for start, end in pairs)
    return timings


def time_ms(fn: Callable[[], Any], *, device: torch.device, warmup: int, iters: int) -> List[float]:
    """Milliseconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls (one
    contender of :func:`time_alternating`)."""
    return time_alternating({"fn": fn}, device=device, warmup=warmup, iters=iters)["fn"].ms


def median_ms(fn: Callable[[], Any], *, device: torch.device, warmup: int, iters: int) -> float:
    """Median of :func:`time_ms`."""
    return statistics.median(time_ms(fn, device=device, warmup=warmup, iters=iters))


def _proc_status_kib(field: str) -> int:
    with open(_PROC_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # reported in kB
    raise RuntimeError(f"{_PROC_STATUS} has no {field} (CPU memory figures need Linux)")


def _trim_malloc_heap() -> None:
    """Give the pages of memory freed earlier back to the OS (glibc ``malloc_trim``), so that
    reusing them shows up as resident-set growth again. No-op without glibc."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@dataclass
class MemoryPeak:
    """Peak memory of a block, in MiB.

    Attributes:
        peak_mib: CUDA: ``max_memory_allocated`` (everything allocated, weights included);
            CPU: the peak resident set size (VmHWM).
        growth_mib: ``peak_mib`` minus what was in use when the block started.
        reserved_mib: CUDA: ``max_memory_reserved`` (what the caching allocator took from the
            device); CPU: ``peak_mib``.
        device_type: ``"cuda"`` or ``"cpu"``.
    """

    peak_mib: float
    growth_mib: float
    reserved_mib: float
    device_type: str

    def cell(self) -> str:
        """Table cell naming what was measured: the CUDA peak, or the CPU peak RSS growth (what
        was already resident, e.g. the weights, is not counted on CPU)."""
        if self.device_type == "cuda":
            return f"{self.peak_mib:.0f} (CUDA max allocated)"
        return f"{self.growth_mib:.0f} (CPU peak RSS growth)"


class MemoryMeter:
    """Peak memory between :meth:`start` and :meth:`stop`: CUDA allocator statistics, or the CPU
    peak resident set (VmHWM, reset through ``/proc/self/clear_refs``; includes allocator overhead).
    On CPU, :meth:`start` first returns the pages of freed memory to the OS (``malloc_trim``), so
    memory that earlier work freed cannot hide this block's allocations.

    Args:
        device: the device whose memory is measured.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._before_mib = 0.0

    def start(self) -> None:
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before_mib = torch.cuda.memory_allocated(self.device) / MIB
            return
        _trim_malloc_heap()
        with open(_CLEAR_REFS, "w") as f:
            f.write(_RESET_PEAK_RSS)
        self._before_mib = _proc_status_kib("VmRSS") / KIB

    def stop(self) -> MemoryPeak:
        synchronize(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / MIB
            reserved = torch.cuda.max_memory_reserved(self.device) / MIB
        else:
            peak = reserved = _proc_status_kib("VmHWM") / KIB
        return MemoryPeak(peak_mib=peak, growth_mib=peak - self._before_mib, reserved_mib=reserved,
                          device_type=self.device.type)


def random_label_maps(
    *, batch_size: int, size: Tuple[int, int], num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Random label maps shaped like scene labels: each image holds a few classes
    (:data:`CLASSES_PER_IMAGE`) in square blocks (a :data:`LABEL_GRID` x :data:`LABEL_GRID` grid).

    Per-pixel noise would put every class in every image: 150 targets per ADE20K image instead of
    the handful of a real one, and a matching and loss workload many times the real one.

    Args:
        batch_size: number of maps B.
        size: (H, W).
        num_classes: class ids are drawn from ``[0, num_classes)``.
        generator: CPU random generator.

    Returns:
        [B, H, W] int64 label maps (CPU).
    """
    height, width = size
    per_image = min(CLASSES_PER_IMAGE, num_classes)
    maps = []
    for _ in range(batch_size):
        classes = torch.randperm(num_classes, generator=generator)[:per_image]  # [k]
        cells = classes[torch.randint(0, per_image, (LABEL_GRID, LABEL_GRID), generator=generator)]
        rows = torch.arange(height) * LABEL_GRID // height  # [H] grid row of each pixel row
        cols = torch.arange(width) * LABEL_GRID // width  # [W]
        maps.append(cells[rows[:, None], cols[None, :]])  # [H, W]
    return torch.stack(maps)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages as ``uptime`` prints them, e.g. ``"1.52 1.40 1.30"``."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def describe_machine(device: torch.device) -> str:
    """E.g. ``"2-core x86_64 CPU, no GPU, load 1.52 1.40 1.30"`` or ``"NVIDIA H200, 16-core x86_64
    CPU, load 0.10 0.05 0.01"``: the load average (:func:`load_average`) when it is called, so
    that a figure measured on a busy machine says so."""
    cpu = f"{os.cpu_count()}-core {platform.machine()} CPU"
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}, {cpu}"
    else:
        machine = cpu if torch.cuda.is_available() else f"{cpu}, no GPU"
    return f"{machine}, load {load_average()}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (header, separator, one line per row) as in ``docs/benchmarks.md``.

    Raises:
        ValueError: a row whose length differs from the header's.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)} has {len(row)} cells, the header {len(header)}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def write_records(path: Optional[str], records: Sequence[Mapping[str, Any]]) -> None:
    """Write the measured records as a JSON list (for ``--json``; ``dev/gpu_check.py`` reads
    them). Does nothing when ``path`` is None. The file is replaced whole (atomically) each time,
    so a tool can call this after every row and a crash later keeps what was measured.
    """
    if path is None:
        return
    with atomic_open(path, "w", suffix=".json") as f:
        json.dump(list(records), f, indent=1)

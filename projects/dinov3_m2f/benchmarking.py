"""Measuring helpers shared by the benchmark tools (``dev/benchmark*.py``, ``dev/gpu_check.py``).

Device and dtype names, timed loops, peak memory, a description of the machine, and the Markdown
and JSON output the tools print and write. Plain PyTorch: nothing here imports detectron2, so the
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

__all__ = [
    "AMP_FLAGS",
    "DTYPES",
    "MemoryMeter",
    "MemoryPeak",
    "autocast",
    "describe_machine",
    "interleaved_median_ms",
    "load_average",
    "markdown_table",
    "median_ms",
    "parse_device",
    "random_label_maps",
    "synchronize",
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


def parse_device(name: str = "auto") -> torch.device:
    """A device from a command-line name.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.

    Raises:
        ValueError: not a CPU or CUDA device name.
        RuntimeError: a CUDA device was asked for and CUDA is not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {name!r}") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but CUDA is not available")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> torch.autocast:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a disabled one for None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def time_ms(fn: Callable[[], Any], *, device: torch.device, warmup: int, iters: int) -> List[float]:
    """Milliseconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls.

    On CUDA each call is timed with a pair of CUDA events on the current stream (device time,
    launch gaps included, no host synchronisation between calls); on CPU with the host clock.

    Args:
        fn: the work to time.
        device: where ``fn`` runs.
        warmup: untimed calls first (lazy initialisation, autotuning, allocator growth).
        iters: timed calls.

    Returns:
        ``iters`` durations in ms (take the median for a figure).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters} and {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def median_ms(fn: Callable[[], Any], *, device: torch.device, warmup: int, iters: int) -> float:
    """Median of :func:`time_ms`."""
    return statistics.median(time_ms(fn, device=device, warmup=warmup, iters=iters))


def interleaved_median_ms(
    contenders: Mapping[str, Callable[[], Any]], *, warmup: int, iters: int
) -> Dict[str, float]:
    """Median host-clock ms per call of each contender, timed call by call in turn (CPU).

    Each of ``iters`` rounds calls every contender once, the order rotating from round to round,
    so that a change of machine load (other jobs, a throttled core) falls on all contenders
    alike instead of on whichever happened to run then. ``warmup`` untimed rounds come first.

    Args:
        contenders: name -> the work to time.
        warmup: untimed rounds.
        iters: timed rounds.

    Returns:
        name -> median ms.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters} and {warmup}")
    names = list(contenders)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(warmup + iters):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            if round_index >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"0.52 0.61 0.70"`` (what else ran)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


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


def describe_machine(device: torch.device) -> str:
    """E.g. ``"2-core x86_64 CPU, no GPU"`` or ``"NVIDIA H200, 16-core x86_64 CPU"``."""
    cpu = f"{os.cpu_count()}-core {platform.machine()} CPU"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {cpu}"
    return cpu if torch.cuda.is_available() else f"{cpu}, no GPU"


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

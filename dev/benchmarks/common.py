"""What the benchmark modes share: their common command-line options, the set-up of a run and the
first cells of every table row (date, machine with its load average, torch version)."""
import argparse
import datetime
import logging
from typing import Dict, Optional, Sequence

import torch

from dinov3_m2f.benchmarking import describe_machine, parse_device

__all__ = ["add_run_options", "make_parser", "parse", "row_start", "start"]


def make_parser(mode: str, doc: Optional[str]) -> argparse.ArgumentParser:
    """The parser of ``dev/benchmark.py <mode>``, its help the mode module's docstring."""
    return argparse.ArgumentParser(prog=f"dev/benchmark.py {mode}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_options(
    parser: argparse.ArgumentParser, *, device: str = "auto", warmup: Optional[int] = 3, iters: Optional[int] = 10
) -> None:
    """``--device``, ``--warmup``, ``--iters`` (left out when their default is None), ``--threads``,
    ``--date``, ``--machine`` and ``--json``."""
    parser.add_argument("--device", default=device, help="auto | cpu | cuda | cuda:<i>")
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls (or rounds) before timing")
    if iters is not None:
        parser.add_argument("--iters", type=int, default=iters, help="timed calls (or rounds)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's choice)")
    parser.add_argument("--date", default=None, help="date in the rows (default: today)")
    parser.add_argument("--machine", default=None,
                        help="machine in the rows (default: from the system, with its load average)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the figures as JSON records (dev/gpu_check.py reads them)")


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], *,
          positive: Sequence[str] = ()) -> argparse.Namespace:
    """Parse ``argv``; ``--iters`` and the options named in ``positive`` must be >= 1, ``--warmup`` >= 0."""
    args = parser.parse_args(argv)
    for name in ("iters", *positive):
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "warmup", 0) < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def start(args: argparse.Namespace) -> torch.device:
    """Set up a run: logging, ``--threads``, the torch seed; returns the ``--device``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return parse_device(args.device)


def row_start(args: argparse.Namespace, device: torch.device) -> Dict[str, str]:
    """The first cells of a row: date, machine (with the load average now) and torch version."""
    return dict(date=args.date or datetime.date.today().isoformat(),
                machine=args.machine or describe_machine(device), torch=torch.__version__)

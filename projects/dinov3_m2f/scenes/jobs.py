"""Many scenes: split across processes, restartable, one failure reported and skipped.

``tools/segment_scenes.py`` calls :func:`run_scenes` in every process with that process's rank:
process ``r`` of ``n`` takes scenes ``r, r + n, r + 2n, ...`` of the sorted list, so each scene
is segmented by exactly one process and the outputs do not depend on the number of processes.
A scene whose labels file exists is skipped (outputs are written atomically, the labels file
last, so an existing one is complete): a restarted job continues where it stopped. A scene that
fails (unreadable file, bad band selection, ...) is logged with the reason and skipped; the
others go on.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, List, Sequence, Tuple

from .segment import scene_outputs

__all__ = ["JobReport", "run_scenes", "scene_share"]

logger = logging.getLogger(__name__)


@dataclass
class JobReport:
    """What one process did: scenes segmented, already done, and failed (path, reason)."""

    segmented: List[str] = field(default_factory=list)
    already_done: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)


def scene_share(files: Sequence[str], *, rank: int, world_size: int) -> List[str]:
    """The scenes of process ``rank`` of ``world_size``: every ``world_size``-th, from ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return list(files)[rank::world_size]


def run_scenes(
    files: Sequence[str],
    segment_one: Callable[[str], object],
    *,
    output_dir: str,
    rank: int = 0,
    world_size: int = 1,
) -> JobReport:
    """Segment this process's share of ``files`` with ``segment_one(path)``.

    Args:
        files: all scenes (the same list, in the same order, in every process).
        segment_one: writes the outputs of one scene into ``output_dir``.
        output_dir: the output folder (created if needed).
        rank, world_size: this process and the number of processes.

    Returns:
        The report of this process.
    """
    os.makedirs(output_dir, exist_ok=True)
    report = JobReport()
    for path in scene_share(files, rank=rank, world_size=world_size):
        if os.path.exists(scene_outputs(path, output_dir).labels):
            logger.info("%s: already done, skipped", path)
            report.already_done.append(path)
            continue
        try:
            segment_one(path)
        except Exception as e:  # one bad scene must not stop the others; reported below
            logger.exception("%s: failed, skipped", path)
            report.failed.append((path, f"{type(e).__name__}: {e}"))
            continue
        report.segmented.append(path)
    logger.info("process %d/%d: %d segmented, %d already done, %d failed", rank, world_size,
                len(report.segmented), len(report.already_done), len(report.failed))
    for path, reason in report.failed:
        logger.error("failed: %s (%s)", path, reason)
    return report

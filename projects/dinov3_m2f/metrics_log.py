"""The JSON-lines metrics file that detectron2's ``JSONWriter`` writes (``metrics.json``)."""
import json
import logging
import os

from .atomic_files import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["drop_metrics_from"]


def drop_metrics_from(path: str, iteration: int) -> int:
    """Remove the entries of iteration ``iteration`` and later from a JSON-lines metrics file
    (detectron2's ``metrics.json``), atomically; a line cut short by a crash goes too.

    A run restarting at ``iteration`` writes those entries again: detectron2's writer appends.

    Args:
        path: the file; nothing happens when it does not exist.
        iteration: the first iteration to drop.

    Returns:
        The number of lines removed.
    """
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a partial line written when the process was killed
        if isinstance(entry, dict) and entry.get("iteration", -1) < iteration:
            kept.append(line if line.endswith("\n") else line + "\n")
    removed = len(lines) - len(kept)
    if removed:
        with atomic_open(path, "w", suffix=".json") as f:
            f.writelines(kept)
        logger.info("Removed %d entries of iteration %d and later from %s", removed, iteration, path)
    return removed

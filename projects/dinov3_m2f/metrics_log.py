"""The JSON-lines metrics file that detectron2's ``JSONWriter`` writes (``metrics.json``)."""
import json
import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["drop_metrics_from"]


def drop_metrics_from(path: str, iteration: int) -> int:
    """Remove the entries of iteration ``iteration`` and later from a JSON-lines metrics file
    (detectron2's ``metrics.json``) in place; a line cut short by a crash goes too.

    A run restarting at ``iteration`` writes those entries again: detectron2's writer appends.
    The file keeps its inode, so a ``JSONWriter`` that already opened it (append mode) goes on
    writing into it: replacing the file instead would leave that writer appending to a deleted
    one. When the kept lines are the start of the file (the usual case: a resumed run drops its
    tail), the file is only truncated, in one system call; otherwise it is rewritten in place.

    Args:
        path: the file; nothing happens when it does not exist.
        iteration: the first iteration to drop.

    Returns:
        The number of lines removed.
    """
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        content = f.read()
        lines = content.splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a partial line written when the process was killed
            if isinstance(entry, dict) and entry.get("iteration", -1) < iteration:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
        removed = len(lines) - len(kept)
        if not removed:
            return 0
        kept_bytes = b"".join(kept)
        if not content.startswith(kept_bytes):
            f.seek(0)
            f.write(kept_bytes)
        f.truncate(len(kept_bytes))
        f.flush()
        os.fsync(f.fileno())
    logger.info("Removed %d entries of iteration %d and later from %s", removed, iteration, path)
    return removed

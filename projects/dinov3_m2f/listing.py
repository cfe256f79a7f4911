"""How many items an error or log message lists before it says how many there are in all."""
from typing import Sequence

__all__ = ["MAX_LISTED", "short_list"]

MAX_LISTED = 10


def short_list(items: Sequence[object], *, noun: str = "items") -> str:
    """``items`` joined with commas, cut after :data:`MAX_LISTED` with the total count.

    Args:
        items: what to list.
        noun: what the items are, for the count (e.g. ``"files"``).
    """
    shown = ", ".join(str(item) for item in items[:MAX_LISTED])
    return shown + (f", ... ({len(items)} {noun})" if len(items) > MAX_LISTED else "")

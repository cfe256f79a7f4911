"""Surviving a sample that fails to read during training (no detectron2).

The scan before training (:mod:`dinov3_m2f.data.scan`) finds the files that are bad from the
start. A file can still fail later: it was changed since, or a network file system had a hiccup.
:class:`BadSampleSkipper` wraps the reading of one sample: a failure is retried once (after a short
pause), then the sample is skipped with a warning naming it; once more than ``max_bad_samples``
samples have been skipped, :class:`TooManyBadSamplesError` stops training with the list.

Wrap only the reading of the sample's files (e.g.
:func:`~dinov3_m2f.data.masks.read_image_and_mask`), so that every error caught is about those files:
the readers raise ``OSError`` or ``ValueError`` naming the file, and nothing else is caught.
The count is per process: each data loading worker keeps its own.
"""
import logging
import time
from typing import Callable, List, Optional, Tuple, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["BadSampleSkipper", "SAMPLE_READ_ERRORS", "TooManyBadSamplesError"]

_T = TypeVar("_T")

# What the image and mask readers raise for a missing, unreadable or invalid file.
SAMPLE_READ_ERRORS = (OSError, ValueError)
# Pause before the retry, so that a network file system hiccup can pass.
DEFAULT_RETRY_DELAY_S = 1.0


class TooManyBadSamplesError(RuntimeError):
    """More samples failed to read than allowed; the message lists each with its reason.

    Attributes:
        skipped: (path, reason) of every skipped sample.
    """

    def __init__(self, message: str, *, skipped: List[Tuple[str, str]]):
        super().__init__(message)
        self.skipped = list(skipped)


class BadSampleSkipper:
    """Reads samples, retrying a failure once and skipping the sample if it fails again.

    Args:
        max_bad_samples: samples that may be skipped; one more raises
            :class:`TooManyBadSamplesError` (0: the first sample that fails twice stops training).
        retry_delay_s: seconds to wait before the retry.
    """

    def __init__(self, *, max_bad_samples: int, retry_delay_s: float = DEFAULT_RETRY_DELAY_S):
        if max_bad_samples < 0:
            raise ValueError(f"max_bad_samples must be >= 0, got {max_bad_samples}")
        if retry_delay_s < 0:
            raise ValueError(f"retry_delay_s must be >= 0, got {retry_delay_s}")
        self.max_bad_samples = max_bad_samples
        self.retry_delay_s = retry_delay_s
        self.skipped: List[Tuple[str, str]] = []

    def __call__(self, read: Callable[[], _T], *, path: str) -> Optional[_T]:
        """Call ``read()``; retry once if it fails; ``None`` if it fails twice (sample skipped).

        Args:
            read: reads one sample; raises ``OSError`` / ``ValueError`` for a bad file.
            path: the sample's file, named in warnings and in the final error.

        Returns:
            What ``read`` returned, or ``None`` when the sample is skipped.

        Raises:
            TooManyBadSamplesError: this skip is one more than ``max_bad_samples``.
        """
        try:
            return read()
        except SAMPLE_READ_ERRORS as e:
            logger.warning("Reading %s failed, retrying once: %s", path, e)
        time.sleep(self.retry_delay_s)
        try:
            return read()
        except SAMPLE_READ_ERRORS as e:
            self.skipped.append((path, str(e)))
            if len(self.skipped) > self.max_bad_samples:
                listing = "\n".join(f"  {p}: {reason}" for p, reason in self.skipped)
                raise TooManyBadSamplesError(
                    f"{len(self.skipped)} samples failed to read twice, more than the "
                    f"{self.max_bad_samples} allowed; stopping. Skipped samples:\n{listing}",
                    skipped=self.skipped,
                ) from e
            logger.warning(
                "Skipping %s: it failed to read twice (%d of at most %d bad samples): %s",
                path, len(self.skipped), self.max_bad_samples, e,
            )
        return None

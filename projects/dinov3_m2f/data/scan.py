"""The fast dataset scan run before training starts (no detectron2).

A corrupt file met at iteration 50,000 should have been found before iteration 0.
:func:`scan_dataset` runs :func:`~dinov3_m2f.data.checks.check_sample` on every training sample,
reading image headers only (size, pixel format, EXIF orientation) and decoding every mask (cheap
for PNG): missing or unreadable files, refused pixel formats, multi-channel masks, masks that fit
neither the displayed nor the stored image size, and label values outside the classes. It runs on
a thread pool with a progress bar, and fails with one :class:`DatasetScanError` listing every bad
file and its reason. A dataset whose masks label no pixel at all (every value the ignore value,
e.g. a wrong ``label_map`` or ``ignore_value``) is refused too: it would train to an mIoU of NaN.

Results are cached in a JSON file: a sample whose image and mask have the size and modification
time (nanoseconds) recorded at its last successful check is not read again, so a restart skips
the scan; an edited file is checked again. The cache holds only good samples, and is thrown away
when the dataset settings (``num_classes``, ``ignore_value``, ``label_map``) or the checks change.
A file rewritten with the same size within the file system's timestamp resolution is not noticed.
"""
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..atomic_files import atomic_open
from .checks import Problem, SampleCheck, check_sample, map_with_progress, validate_dataset_dicts
from .masks import IGNORE_VALUE

logger = logging.getLogger(__name__)

__all__ = ["DatasetScanError", "ScanResult", "scan_dataset"]

# Bump when the checks change, so that older caches are not trusted.
CACHE_VERSION = 2

# [size in bytes, modification time in ns] of each file of a sample (lists, as JSON stores them).
_Stamp = List[List[int]]


class DatasetScanError(ValueError):
    """Samples of a dataset cannot be used; the message lists every bad file with its reason.

    Attributes:
        problems: every problem found.
    """

    def __init__(self, message: str, *, problems: Sequence[Problem]):
        super().__init__(message)
        self.problems = list(problems)


@dataclass
class ScanResult:
    """Result of a successful :func:`scan_dataset`.

    Attributes:
        num_samples: samples in the dataset.
        num_cached: samples whose files were unchanged since a cached check (not read).
        labelled_pixels: mask pixels holding a class id (not the ignore value), all samples.
        notes: notes of every sample (EXIF orientations, 16-bit images), cached ones included.
    """

    num_samples: int
    num_cached: int
    labelled_pixels: int = 0
    notes: List[str] = field(default_factory=list)


def _settings(num_classes: int, ignore_value: int, label_map: Optional[Mapping[int, int]]) -> Dict:
    labels = None if label_map is None else sorted([int(k), int(v)] for k, v in label_map.items())
    return {"version": CACHE_VERSION, "num_classes": num_classes, "ignore_value": ignore_value, "label_map": labels}


def _load_cache(path: str, settings: Dict) -> Dict[str, Dict]:
    """Cached samples by image path; empty when the file is absent, unreadable or for other settings."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            cache = json.load(f)
        if cache["settings"] != settings:
            logger.info("Dataset scan cache %s was made with other settings; checking every sample", path)
            return {}
        return {key: entry for key, entry in cache["samples"].items() if isinstance(entry, dict)}
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("Ignoring the unreadable dataset scan cache %s: %s", path, e)
        return {}


def _save_cache(path: str, settings: Dict, samples: Dict[str, Dict]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_open(path, "w", suffix=".json") as f:
        json.dump({"settings": settings, "samples": samples}, f)


def _stamp(record: Mapping) -> Optional[_Stamp]:
    """Size and mtime of the sample's files, or ``None`` when one cannot be stat'ed."""
    paths = [record["file_name"]] + ([record["sem_seg_file_name"]] if "sem_seg_file_name" in record else [])
    try:
        stats = [os.stat(p) for p in paths]
    except OSError:
        return None
    return [[s.st_size, s.st_mtime_ns] for s in stats]


def _cache_key(record: Mapping) -> str:
    return os.path.abspath(record["file_name"])


def _cache_entry(record: Mapping, stamp: _Stamp, *, notes: Sequence[str] = (), labelled: int = 0) -> Dict:
    mask = record.get("sem_seg_file_name")
    return {
        "mask": None if mask is None else os.path.abspath(mask), "stamp": stamp, "notes": list(notes),
        "labelled": labelled,
    }


def _is_cache_hit(entry: Optional[Mapping], record: Mapping, stamp: Optional[_Stamp]) -> bool:
    """Whether a cached entry is of this sample's files as they are now (same size and mtime)."""
    if entry is None or stamp is None:
        return False
    current = _cache_entry(record, stamp)
    return (entry.get("mask"), entry.get("stamp")) == (current["mask"], stamp) and isinstance(
        entry.get("labelled"), int
    )


def _format_error(problems: Sequence[Problem], num_bad: int, num_samples: int) -> str:
    lines = [
        f"{num_bad} of {num_samples} training samples cannot be used; fix or remove these files and "
        "start again (tools/check_dataset.py gives a full report):"
    ]
    lines += [f"  {problem.message}" for problem in problems]
    return "\n".join(lines)


def _nothing_labelled_error(num_samples: int, ignore_value: int) -> DatasetScanError:
    return DatasetScanError(
        f"none of the {num_samples} training samples has a labelled pixel: every mask value is the "
        f"ignore value {ignore_value} (after the dataset's label_map). Training would learn nothing "
        "and evaluate to an mIoU of NaN; check the masks, ignore_value and label_map "
        "(tools/check_dataset.py shows the per-class pixel counts)",
        problems=[],
    )


def scan_dataset(
    dataset_dicts: Sequence[Mapping],
    *,
    num_classes: int,
    ignore_value: int = IGNORE_VALUE,
    label_map: Optional[Mapping[int, int]] = None,
    cache_path: Optional[str] = None,
    num_workers: Optional[int] = None,
    progress: bool = True,
) -> ScanResult:
    """Check every sample of a training set before training; raise listing every bad file.

    Args:
        dataset_dicts: dicts with ``file_name`` and ``sem_seg_file_name`` (as registered).
        num_classes: number of classes; labels must be ``0..num_classes-1`` or ``ignore_value``.
        ignore_value: label of ignored pixels.
        label_map: raw mask value -> class id (the dataset's ``label_map`` metadata).
        cache_path: JSON file remembering good samples (e.g. in the output or a cache folder);
            created with its folder. ``None``: no cache.
        num_workers: reading threads (``None``: Python's default).
        progress: show a progress bar.

    Returns:
        The :class:`ScanResult`.

    Raises:
        DatasetScanError: one or more samples are bad; lists all of them, each with its reason.
            The good samples are cached before it is raised. Also raised when no mask labels any
            pixel.
    """
    validate_dataset_dicts(dataset_dicts, num_classes=num_classes)
    settings = _settings(num_classes, ignore_value, label_map)
    cached = _load_cache(cache_path, settings) if cache_path is not None else {}
    start = time.perf_counter()

    def scan_one(record: Mapping) -> Tuple[Optional[Dict], SampleCheck, bool]:
        stamp = _stamp(record)  # taken before reading: a file edited meanwhile is checked next time
        entry = cached.get(_cache_key(record))
        if _is_cache_hit(entry, record, stamp):
            return entry, SampleCheck(), True
        result = check_sample(
            record, num_classes=num_classes, ignore_value=ignore_value, label_map=label_map, decode_image=False
        )
        good = stamp is not None and not result.problems
        notes = [note.message for note in result.notes]
        labelled = 0 if result.pixels is None else int(result.pixels.sum())
        return (_cache_entry(record, stamp, notes=notes, labelled=labelled) if good else None), result, False

    outcomes = map_with_progress(scan_one, dataset_dicts, num_workers=num_workers, desc="scan", progress=progress)
    good: Dict[str, Dict] = {}
    problems: List[Problem] = []
    num_bad = 0
    for record, (entry, result, _) in zip(dataset_dicts, outcomes):
        problems += result.problems
        num_bad += bool(result.problems)
        if entry is not None:
            good[_cache_key(record)] = entry
    if cache_path is not None:
        _save_cache(cache_path, settings, good)
    num_cached = sum(hit for _, _, hit in outcomes)
    logger.info(
        "Scanned %d training samples in %.1f s (%d unchanged since the cached scan): %d bad",
        len(dataset_dicts), time.perf_counter() - start, num_cached, num_bad,
    )
    if problems:
        raise DatasetScanError(_format_error(problems, num_bad, len(dataset_dicts)), problems=problems)
    labelled_pixels = sum(entry["labelled"] for entry in good.values())
    if labelled_pixels == 0:
        raise _nothing_labelled_error(len(dataset_dicts), ignore_value)
    notes = [note for entry in good.values() for note in entry["notes"]]
    if notes:
        logger.info(
            "%d notes on the training set (e.g. EXIF-rotated images, see dinov3_m2f.data.image); "
            "the first: %s", len(notes), notes[0],
        )
    return ScanResult(
        num_samples=len(dataset_dicts), num_cached=num_cached, labelled_pixels=labelled_pixels, notes=notes
    )

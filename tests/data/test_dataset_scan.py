"""One bad sample must not kill a run: the scan before training (dinov3_m2f.data.scan) and the
retry-then-skip helper for reads during training (dinov3_m2f.data.bad_samples)."""
import errno
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from dinov3_m2f.data.bad_samples import BadSampleSkipper, TooManyBadSamplesError
from dinov3_m2f.data.image import read_image
from dinov3_m2f.data.masks import read_image_and_mask
from dinov3_m2f.data.scan import DatasetScanError, scan_dataset

NUM_CLASSES = 3
SIZE = (8, 10)  # H, W


def _dataset(root, num=5):
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(num):
        image, mask = images / f"s{i}.jpg", masks / f"s{i}.png"
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(image)
        Image.fromarray(np.full(SIZE, i % NUM_CLASSES, dtype=np.uint8)).save(mask)
        dicts.append({"file_name": str(image), "sem_seg_file_name": str(mask)})
    return dicts


def _scan(dicts, cache_path=None, **kwargs):
    return scan_dataset(dicts, num_classes=NUM_CLASSES, cache_path=cache_path, num_workers=2, **kwargs)


def _garble_keeping_size_and_mtime(path):
    """Overwrite a file with garbage of the same size and give it back its modification time."""
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _touch(path):
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_every_bad_file_is_listed_with_its_reason(tmp_path):
    dicts = _dataset(tmp_path, num=8)
    (tmp_path / "images" / "s0.jpg").write_bytes(b"not a jpeg")
    os.remove(dicts[1]["sem_seg_file_name"])
    Image.fromarray(np.full(SIZE, 7, dtype=np.uint8)).save(dicts[2]["sem_seg_file_name"])
    Image.fromarray(np.zeros((*SIZE, 3), dtype=np.uint8)).save(dicts[3]["sem_seg_file_name"])
    Image.fromarray(np.zeros((SIZE[0] + 2, SIZE[1]), dtype=np.uint8)).save(dicts[4]["sem_seg_file_name"])
    Image.fromarray(np.zeros(SIZE, dtype=np.float32)).save(tmp_path / "images" / "deep.tif")
    dicts[5]["file_name"] = str(tmp_path / "images" / "deep.tif")

    with pytest.raises(DatasetScanError) as info:
        _scan(dicts, progress=True)
    message = str(info.value)
    assert message.startswith("6 of 8 training samples cannot be used")
    expected = [
        (dicts[0]["file_name"], "cannot read image file"),
        (dicts[1]["sem_seg_file_name"], "does not exist"),
        (dicts[2]["sem_seg_file_name"], "label values [7]"),
        (dicts[3]["sem_seg_file_name"], "3 channels"),
        (dicts[4]["sem_seg_file_name"], "must have the same size"),
        (dicts[5]["file_name"], "'F' (Pillow mode) is not supported"),
    ]
    lines = message.splitlines()[1:]
    assert len(lines) == len(expected) == len(info.value.problems)
    for (path, reason), line in zip(expected, lines):
        assert path in line and reason in line
    for good in dicts[6:]:
        assert good["file_name"] not in message


def test_cache_hit_skips_reading_and_an_edited_file_is_checked_again(tmp_path):
    dicts = _dataset(tmp_path)
    cache = str(tmp_path / "out" / "scan_cache.json")
    first = _scan(dicts, cache)
    assert first.num_samples == 5 and first.num_cached == 0
    # Unreadable now, but same size and mtime: the cached result stands, the file is not read.
    _garble_keeping_size_and_mtime(dicts[2]["file_name"])
    _garble_keeping_size_and_mtime(dicts[3]["sem_seg_file_name"])
    assert _scan(dicts, cache).num_cached == 5
    # Edited (newer mtime): checked again, and found bad.
    _touch(dicts[2]["file_name"])
    with pytest.raises(DatasetScanError, match=f"1 of 5 .*\n.*{dicts[2]['file_name']}") as info:
        _scan(dicts, cache)
    assert dicts[3]["sem_seg_file_name"] not in str(info.value)
    _touch(dicts[3]["sem_seg_file_name"])
    with pytest.raises(DatasetScanError, match="2 of 5") as info:
        _scan(dicts, cache)
    assert dicts[3]["sem_seg_file_name"] in str(info.value)


def test_good_samples_are_cached_even_when_the_scan_fails(tmp_path):
    dicts = _dataset(tmp_path)
    cache = str(tmp_path / "scan_cache.json")
    os.remove(dicts[4]["sem_seg_file_name"])
    with pytest.raises(DatasetScanError, match="1 of 5"):
        _scan(dicts, cache)
    Image.fromarray(np.zeros(SIZE, dtype=np.uint8)).save(dicts[4]["sem_seg_file_name"])  # fixed
    assert _scan(dicts, cache).num_cached == 4  # only the fixed sample is read again
    assert _scan(dicts, cache).num_cached == 5


def test_other_settings_or_a_broken_cache_file_check_everything_again(tmp_path, caplog):
    dicts = _dataset(tmp_path)
    cache = tmp_path / "scan_cache.json"
    _scan(dicts, str(cache))
    assert scan_dataset(dicts, num_classes=NUM_CLASSES + 1, cache_path=str(cache)).num_cached == 0
    assert scan_dataset(dicts, num_classes=NUM_CLASSES + 1, cache_path=str(cache)).num_cached == 5
    assert json.loads(cache.read_text())["settings"]["num_classes"] == NUM_CLASSES + 1
    label_map = {0: 0, 1: 1, 2: 2}
    assert _scan(dicts, str(cache), label_map=label_map).num_cached == 0
    cache.write_text("{ truncated")
    with caplog.at_level(logging.WARNING):
        assert _scan(dicts, str(cache), label_map=label_map).num_cached == 0
    assert any("unreadable dataset scan cache" in r.getMessage() for r in caplog.records)


def test_exif_notes_survive_the_cache(tmp_path):
    dicts = _dataset(tmp_path, num=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: turn 90 degrees clockwise to display
    Image.fromarray(np.zeros((*SIZE, 3), dtype=np.uint8)).save(dicts[0]["file_name"], exif=exif)
    cache = str(tmp_path / "scan_cache.json")
    for expected_cached in (0, 2):
        result = _scan(dicts, cache)
        assert result.num_cached == expected_cached
        assert len(result.notes) == 1 and "EXIF orientation 6" in result.notes[0]
        assert "stored size and is turned with the image" in result.notes[0]


def test_a_failed_read_is_retried_once(tmp_path, caplog):
    dicts = _dataset(tmp_path, num=1)
    calls = []

    def flaky_read():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")  # a network file system hiccup
        return read_image_and_mask(dicts[0]["file_name"], dicts[0]["sem_seg_file_name"])

    skipper = BadSampleSkipper(max_bad_samples=0, retry_delay_s=0)
    with caplog.at_level(logging.WARNING):
        image, labels = skipper(flaky_read, path=dicts[0]["file_name"])
    assert image.shape == (*SIZE, 3) and labels.shape == SIZE and len(calls) == 2
    assert not skipper.skipped
    assert any("retrying once" in r.getMessage() and dicts[0]["file_name"] in r.getMessage() for r in caplog.records)


def test_bad_samples_are_skipped_then_training_stops_with_the_list(tmp_path, caplog):
    dicts = _dataset(tmp_path, num=4)
    for record in dicts[:3]:
        (tmp_path / "images" / os.path.basename(record["file_name"])).write_bytes(b"changed since the scan")
    skipper = BadSampleSkipper(max_bad_samples=2, retry_delay_s=0)

    def read(record):
        return skipper(lambda: read_image(record["file_name"]), path=record["file_name"])

    assert read(dicts[3]) is not None
    with caplog.at_level(logging.WARNING):
        assert read(dicts[0]) is None and read(dicts[1]) is None
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping")]
    assert len(skips) == 2 and dicts[0]["file_name"] in skips[0] and "1 of at most 2" in skips[0]
    with pytest.raises(TooManyBadSamplesError, match="3 samples failed to read twice, more than the 2 allowed") as info:
        read(dicts[2])
    for record in dicts[:3]:
        assert record["file_name"] in str(info.value)
    assert [path for path, _ in info.value.skipped] == [d["file_name"] for d in dicts[:3]]


def test_other_errors_are_not_retried_or_skipped():
    calls = []

    def buggy_read():
        calls.append(1)
        raise KeyError("sem_seg_file_name")

    with pytest.raises(KeyError):
        BadSampleSkipper(max_bad_samples=5, retry_delay_s=0)(buggy_read, path="x")
    assert len(calls) == 1
    with pytest.raises(ValueError, match="max_bad_samples"):
        BadSampleSkipper(max_bad_samples=-1)


def test_a_dataset_with_no_labelled_pixel_is_refused_also_from_the_cache(tmp_path):
    dicts = _dataset(tmp_path, num=3)
    cache = str(tmp_path / "cache.json")
    assert _scan(dicts, cache).labelled_pixels == 3 * SIZE[0] * SIZE[1]
    # a label_map that sends every stored value to the ignore value leaves nothing to learn
    everything_ignored = {value: 255 for value in range(NUM_CLASSES)}
    for _ in range(2):  # the second scan reads the cache
        with pytest.raises(DatasetScanError, match="none of the 3 training samples has a labelled pixel"):
            _scan(dicts, cache, label_map=everything_ignored)
    for record in dicts:
        Image.fromarray(np.full(SIZE, 255, dtype=np.uint8)).save(record["sem_seg_file_name"])
    with pytest.raises(DatasetScanError, match="ignore value 255"):
        _scan(dicts, cache)

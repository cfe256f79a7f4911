"""The training data stream: its order and augmentation randomness are
functions of the seed and the sample position, so a resumed run, a run with data-loading workers
and a run on several processes see the same samples; the training loader scans the dataset
before iteration 0 (cached) and skips a sample that fails to read during training, up to a bound."""
import logging
import os
import random

import numpy as np
import pytest
import torch.utils.data as torchdata
from PIL import Image

from dinov3_m2f.data.sampling import TrainingSampleStream

NUM_CLASSES = 3
SIZE = (8, 10)  # H, W


def _draw(item):
    """A 'mapped sample': the item and what random augmentations would draw for it."""
    return item, int(np.random.randint(1 << 30)), random.random()


def _take(stream, num):
    samples = []
    for sample in stream:
        samples.append(sample)
        if len(samples) == num:
            return samples


def test_a_stream_started_at_batch_n_continues_the_uninterrupted_stream():
    whole = _take(TrainingSampleStream(list(range(7)), _draw, seed=3, batch_size=2), 30)
    resumed = TrainingSampleStream(list(range(7)), _draw, seed=3, batch_size=2)
    resumed.start_batch = 5
    assert _take(resumed, 20) == whole[10:]
    # every epoch visits each sample once, in another order
    epochs = [sorted(s[0] for s in whole[i:i + 7]) for i in (0, 7, 14)]
    assert epochs == [list(range(7))] * 3
    assert [s[0] for s in whole[:7]] != [s[0] for s in whole[7:14]]
    other_seed = _take(TrainingSampleStream(list(range(7)), _draw, seed=4, batch_size=2), 30)
    assert other_seed != whole


def test_data_loading_workers_give_the_batches_of_a_single_process():
    def batches(num_workers, start_batch):
        stream = TrainingSampleStream(list(range(11)), _draw, seed=0, batch_size=3)
        stream.start_batch = start_batch
        loader = torchdata.DataLoader(stream, batch_size=3, num_workers=num_workers,
                                      collate_fn=list)
        return _take(loader, 6)

    assert batches(2, 0) == batches(0, 0)
    assert batches(2, 4) == batches(0, 0)[4:] + batches(0, 6)[:4]


def test_processes_share_one_stream_whatever_their_number():
    single = _take(TrainingSampleStream(list(range(9)), _draw, seed=1, batch_size=4), 16)
    ranks = [_take(TrainingSampleStream(list(range(9)), _draw, seed=1, batch_size=2, rank=r,
                                        world_size=2), 8) for r in (0, 1)]
    for j in range(4):  # batch j of each rank together is batch j of the single process
        together = ranks[0][2 * j:2 * j + 2] + ranks[1][2 * j:2 * j + 2]
        assert sorted(together) == sorted(single[4 * j:4 * j + 4])


def test_a_skipped_sample_is_replaced_by_the_next_one_in_every_run():
    def skip_three(item):
        return None if item == 3 else _draw(item)

    first = _take(TrainingSampleStream(list(range(5)), skip_three, seed=2, batch_size=1), 10)
    again = _take(TrainingSampleStream(list(range(5)), skip_three, seed=2, batch_size=1), 10)
    assert first == again and 3 not in [s[0] for s in first]
    assert sorted(s[0] for s in first[:5]) == [0, 1, 2, 4, 4]
    with pytest.raises(RuntimeError, match="none of the 5 training samples could be read"):
        _take(TrainingSampleStream(list(range(5)), lambda item: None, seed=2, batch_size=1), 1)


# ---------------------------------------------------------------- the training loader (detectron2)


def _dataset(root, num):
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(num):
        image, mask = root / "images" / f"s{i}.png", root / "masks" / f"s{i}.png"
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(image)
        Image.fromarray(np.full(SIZE, i % NUM_CLASSES, dtype=np.uint8)).save(mask)
        dicts.append({"file_name": str(image), "sem_seg_file_name": str(mask)})
    return dicts


def _loader(dicts, cache, *, max_bad_samples=0, num_workers=0):
    from dinov3_m2f.d2.mapper import SemSegDatasetMapper
    from dinov3_m2f.d2.train_loader import build_sem_seg_train_loader

    mapper = SemSegDatasetMapper(is_train=True, augmentations=[], num_classes=NUM_CLASSES,
                                 max_bad_samples=max_bad_samples)
    mapper.skip_bad_samples.retry_delay_s = 0
    return build_sem_seg_train_loader(dicts, mapper=mapper, total_batch_size=2, seed=0,
                                      scan_cache=cache, num_workers=num_workers)


def test_the_loader_scans_before_the_first_sample_and_caches_the_scan(tmp_path, caplog):
    pytest.importorskip("detectron2")
    from dinov3_m2f.data.scan import DatasetScanError

    dicts = _dataset(tmp_path, 6)
    cache = str(tmp_path / "scan_cache.json")
    (tmp_path / "images" / "s4.png").write_bytes(b"not an image")
    Image.fromarray(np.full(SIZE, 9, dtype=np.uint8)).save(dicts[5]["sem_seg_file_name"])
    with pytest.raises(DatasetScanError, match="s4.png") as info:
        _loader(dicts, cache)  # before any iteration: building the loader scans
    assert dicts[5]["sem_seg_file_name"] in str(info.value)

    with caplog.at_level(logging.INFO, logger="dinov3_m2f.data.scan"):
        batch = next(iter(_loader(dicts[:4], cache)))
        _loader(dicts[:4], cache)
    # the good samples of the failed scan were cached: nothing is read again
    scans = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Scanned 4 ")]
    assert len(scans) == 2 and all("(4 unchanged since the cached scan): 0 bad" in s for s in scans)
    assert len(batch) == 2 and all(tuple(d["sem_seg"].shape) == SIZE for d in batch)


def test_a_sample_broken_after_the_scan_is_skipped_then_training_stops_past_the_bound(tmp_path, caplog):
    pytest.importorskip("detectron2")
    from dinov3_m2f.data.bad_samples import TooManyBadSamplesError

    dicts = _dataset(tmp_path, 4)
    loader = _loader(dicts, None, max_bad_samples=1)
    os.remove(dicts[1]["file_name"])  # e.g. deleted or unreachable since the scan
    with caplog.at_level(logging.WARNING, logger="dinov3_m2f.data.bad_samples"):
        seen = [d["file_name"] for batch in _take(loader, 2) for d in batch]
    assert dicts[1]["file_name"] not in seen and len(seen) == 4
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"Reading {dicts[1]['file_name']} failed, retrying once") for m in messages)
    assert any(m.startswith(f"Skipping {dicts[1]['file_name']}") for m in messages)

    loader = _loader(dicts[:1] + dicts[2:], None, max_bad_samples=1)
    os.remove(dicts[2]["file_name"])
    os.remove(dicts[3]["file_name"])
    with pytest.raises(TooManyBadSamplesError, match="2 samples failed to read twice, more than the 1 allowed") as info:
        _take(loader, 4)
    assert dicts[2]["file_name"] in str(info.value) and dicts[3]["file_name"] in str(info.value)


def test_the_training_loader_gives_the_same_batches_with_workers_and_when_resumed(tmp_path):
    pytest.importorskip("detectron2")

    dicts = _dataset(tmp_path, 5)

    def file_names(num_workers, start_batch):
        loader = _loader(dicts, None, num_workers=num_workers)
        loader.dataset.start_batch = start_batch  # what tools/train_net.py sets on --resume
        return [[d["file_name"] for d in batch] for batch in _take(loader, 4)]

    single = file_names(0, 0)
    assert file_names(2, 0) == single
    assert file_names(2, 2)[:2] == single[2:]

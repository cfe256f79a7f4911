"""The training data loader: the dataset scan before iteration 0, then detectron2's batched
loader over a :class:`~dinov3_m2f.data.sampling.TrainingSampleStream` (data order and
augmentations that a resumed run reproduces)."""
from typing import Dict, List, Optional

import torch.utils.data as torchdata
from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.utils import comm

from dinov3_m2f.data.sampling import TrainingSampleStream
from dinov3_m2f.data.scan import DatasetScanError, scan_dataset

from .mapper import SemSegDatasetMapper

__all__ = ["build_sem_seg_train_loader"]


def _scan_on_main_process(
    dataset: List[Dict], mapper: SemSegDatasetMapper, cache_path: Optional[str]
) -> None:
    """Scan on the main process; every process raises the same error if the scan fails."""
    error = None
    if comm.is_main_process():
        try:
            scan_dataset(dataset, num_classes=mapper.num_classes, ignore_value=mapper.ignore_label,
                         label_map=mapper.label_map, cache_path=cache_path)
        except Exception as e:  # passed on to the other processes, which would otherwise wait
            error = e
    outcome = comm.all_gather(None if error is None else (str(error), getattr(error, "problems", [])))
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise DatasetScanError(outcome[0][0], problems=outcome[0][1])


def build_sem_seg_train_loader(
    dataset: List[Dict],
    *,
    mapper: SemSegDatasetMapper,
    total_batch_size: int,
    seed: int,
    num_workers: int = 0,
    scan_cache: Optional[str] = None,
) -> torchdata.DataLoader:
    """Scan ``dataset`` (:func:`~dinov3_m2f.data.scan.scan_dataset` on the main process), then
    detectron2's ``build_detection_train_loader`` over this process' sample stream.

    The stream's order and augmentations are functions of ``seed`` and the sample position, so
    batches are never regrouped (no aspect-ratio grouping: crops are padded to one size anyway).
    Before iterating, set ``loader.dataset.start_batch`` to resume.

    Args:
        dataset: dataset dicts with ``file_name`` and ``sem_seg_file_name``.
        mapper: the training mapper (its ``num_classes``, ``ignore_label`` and ``label_map`` are
            the scan's settings).
        total_batch_size: images per micro-batch over all processes.
        seed: the run's seed (``train.seed``).
        num_workers: data-loading worker processes.
        scan_cache: JSON file of the scan results (a restart re-reads only changed files).
    """
    if mapper.num_classes is None:
        raise ValueError("the training mapper needs num_classes (dataloader.train.mapper.num_classes)")
    _scan_on_main_process(dataset, mapper, scan_cache)
    world_size = comm.get_world_size()
    stream = TrainingSampleStream(
        DatasetFromList(dataset, copy=False), mapper, seed=seed,
        batch_size=total_batch_size // world_size, rank=comm.get_rank(), world_size=world_size,
    )
    return build_detection_train_loader(
        stream, mapper=None, total_batch_size=total_batch_size, aspect_ratio_grouping=False,
        num_workers=num_workers,
    )

"""Evaluation that skips unreadable files instead of aborting the whole run.

Training must stop on a corrupt file (see :class:`~dinov3_m2f.d2.mapper.SemSegDatasetMapper`), but
one corrupt image among thousands of validation images should not throw away an evaluation. Two
pieces, used together in a LazyConfig::

    dataloader.test = L(build_sem_seg_test_loader)(dataset=..., mapper=L(SemSegDatasetMapper)(...))
    dataloader.evaluator = L(SkippingSemSegEvaluator)(dataset_name=..., sem_seg_loading_fn=...)

* :func:`build_sem_seg_test_loader` is detectron2's test loader whose mapper turns an
  :class:`~dinov3_m2f.d2.mapper.UnreadableImageError` into a warning naming the file, and whose
  batches leave that image out: the model and the evaluator never see it.
* :class:`SkippingSemSegEvaluator` is detectron2's ``SemSegEvaluator`` that skips, with a warning
  naming the file, an image whose ground-truth mask is missing or does not decode; the image is
  not counted in any metric. Masks that decode but are wrong (multi-channel, labels out of range)
  still raise: those are configuration errors that would otherwise skip every image.
"""
import logging
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch.utils.data as torchdata
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import SemSegEvaluator

from .mapper import UnreadableImageError

logger = logging.getLogger(__name__)

__all__ = ["SkipUnreadableImages", "SkippingSemSegEvaluator", "build_sem_seg_test_loader", "drop_unreadable"]

# Key of the placeholder record that stands for an image that could not be read.
UNREADABLE_KEY = "unreadable"
# How many skipped files the end-of-evaluation summary names.
_MAX_LISTED = 10


class SkipUnreadableImages:
    """Wraps a test mapper: an unreadable image becomes a placeholder record and a warning.

    Args:
        mapper: the dataset mapper (raises :class:`UnreadableImageError` for a bad image).
    """

    def __init__(self, mapper: Callable[[Dict], Dict]):
        self.mapper = mapper

    def __call__(self, dataset_dict: Dict) -> Dict:
        try:
            return self.mapper(dataset_dict)
        except UnreadableImageError as e:
            logger.warning("Skipping %s in evaluation: %s", e.path, e)
            return {"file_name": e.path, UNREADABLE_KEY: str(e)}


def drop_unreadable(batch: List[Dict]) -> List[Dict]:
    """Collate function: the batch as a list, without the placeholders of unreadable images."""
    return [record for record in batch if UNREADABLE_KEY not in record]


def build_sem_seg_test_loader(
    dataset: Any,
    *,
    mapper: Callable[[Dict], Dict],
    sampler: Optional[torchdata.Sampler] = None,
    batch_size: int = 1,
    num_workers: int = 0,
) -> torchdata.DataLoader:
    """detectron2's ``build_detection_test_loader`` that skips unreadable images with a warning.

    Batches that consisted only of unreadable images arrive as empty lists; the model returns no
    output for them and the evaluator counts nothing.

    Args:
        dataset: dataset dicts (a list) or a torch dataset.
        mapper: the test mapper.
        sampler: index sampler (default: detectron2's InferenceSampler).
        batch_size: images per batch.
        num_workers: data loading worker processes.

    Returns:
        The data loader.
    """
    return build_detection_test_loader(
        dataset,
        mapper=SkipUnreadableImages(mapper),
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=drop_unreadable,
    )


class _UnreadableGroundTruth(Exception):
    """Raised by :class:`_GroundTruthReader` for a mask file that is missing or does not decode."""


def _is_unreadable(error: BaseException) -> bool:
    """Whether ``error`` means the file is missing or does not decode (an OSError, possibly
    re-raised as another type by a reader that adds the file name)."""
    return isinstance(error, OSError) or isinstance(error.__cause__, OSError)


class _GroundTruthReader:
    """Wraps a ground-truth loading function; unreadable files raise ``_UnreadableGroundTruth``."""

    def __init__(self, load: Callable[..., np.ndarray]):
        self.load = load

    def __call__(self, filename: str, dtype=int) -> np.ndarray:
        try:
            return self.load(filename, dtype=dtype)
        except (OSError, ValueError) as e:
            if _is_unreadable(e):
                raise _UnreadableGroundTruth(f"ground-truth mask {filename}: {e}") from e
            raise


class SkippingSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` that skips images whose ground-truth mask cannot be read.

    Takes the arguments of ``SemSegEvaluator``. A skipped image is logged with its file name,
    counted in :attr:`skipped` and left out of every metric; the other images are evaluated as
    usual.
    """

    def __init__(self, dataset_name: str, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        self.sem_seg_loading_fn = _GroundTruthReader(self.sem_seg_loading_fn)
        self.skipped: List[str] = []

    def reset(self) -> None:
        super().reset()
        self.skipped = []

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """Evaluate each (input, output) pair; pairs with an unreadable mask are skipped.

        The mask is read before the pair touches any metric state, so a skipped pair leaves no
        trace in the confusion matrix.
        """
        for single_input, single_output in zip(inputs, outputs):
            try:
                super().process([single_input], [single_output])
            except _UnreadableGroundTruth as e:
                logger.warning("Skipping %s in evaluation: %s", single_input["file_name"], e)
                self.skipped.append(single_input["file_name"])

    def evaluate(self):
        if self.skipped:
            shown = ", ".join(self.skipped[:_MAX_LISTED])
            logger.warning(
                "%d images were skipped on this process because their ground truth could not be "
                "read: %s", len(self.skipped), shown,
            )
        return super().evaluate()

"""Semantic-segmentation evaluation: the ground truth read as training reads it, and unreadable
files skipped with a warning naming them (training stops on them; one corrupt image among
thousands should not throw away an evaluation). :func:`build_sem_seg_test_loader` leaves out an
image that raises ``UnreadableImageError``; :class:`SkippingSemSegEvaluator` one whose mask is
missing or does not decode. Masks that decode but are wrong (multi-channel, labels out of range)
still raise: those are configuration errors that would otherwise skip every image. An evaluation
that ends with no labelled ground-truth pixel (every mask all ignore, or every file unreadable)
raises :class:`NothingToEvaluateError` instead of reporting NaN metrics; :func:`results_to_json`
writes the metrics of classes absent from the ground truth (NaN) as ``null``.
"""
import functools
import json
import logging
import math
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm

from dinov3_m2f.listing import MAX_LISTED
from dinov3_m2f.data.image import UnreadableImageError
from dinov3_m2f.data.masks import read_mask_for_image

logger = logging.getLogger(__name__)

__all__ = [
    "NothingToEvaluateError",
    "SemSegGroundTruthLoader",
    "SkippingSemSegEvaluator",
    "UnreadableGroundTruthError",
    "build_sem_seg_test_loader",
    "results_to_json",
]

# Key of the placeholder record that stands for an image that could not be read.
UNREADABLE_KEY = "unreadable"


def _map_or_skip(mapper: Callable[[Dict], Dict], dataset_dict: Dict) -> Dict:
    """``mapper(dataset_dict)``, or a placeholder record and a warning for an unreadable image."""
    try:
        return mapper(dataset_dict)
    except UnreadableImageError as e:
        logger.warning("Skipping %s in evaluation: %s", e.path, e)
        return {"file_name": e.path, UNREADABLE_KEY: str(e)}


def _drop_unreadable(batch: List[Dict]) -> List[Dict]:
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
    """detectron2's ``build_detection_test_loader`` (same arguments) that skips unreadable
    images with a warning; a batch of only unreadable images arrives as an empty list."""
    return build_detection_test_loader(
        dataset, mapper=functools.partial(_map_or_skip, mapper), sampler=sampler,
        batch_size=batch_size, num_workers=num_workers, collate_fn=_drop_unreadable,
    )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_to_json(results: Dict) -> str:
    """Evaluation results as strict JSON text: NaN and infinite values (e.g. the IoU of a class
    absent from the ground truth) become ``null``."""
    return json.dumps(_finite_or_none(results), indent=2, allow_nan=False)


class NothingToEvaluateError(ValueError):
    """The evaluation saw no labelled ground-truth pixel: its metrics would all be NaN."""


class UnreadableGroundTruthError(ValueError):
    """A ground-truth mask file is missing or does not decode."""


class SemSegGroundTruthLoader:
    """``SemSegEvaluator(sem_seg_loading_fn=...)`` that reads a registered dataset's masks as
    training does: lined up with their image as displayed (EXIF policy), through its
    ``label_map`` (e.g. LoveDA's 1..7 as 0..6 and 0 as 255), with the same checks.

    Args:
        dataset_name: registered dataset name.
    """

    def __init__(self, dataset_name: str):
        if dataset_name not in DatasetCatalog.list():
            raise ValueError(f"dataset {dataset_name!r} is not registered")
        metadata = MetadataCatalog.get(dataset_name)
        self.label_map = metadata.get("label_map")
        self.num_classes = len(metadata.stuff_classes)
        self.ignore_label = metadata.ignore_label
        self.image_of_mask = {d["sem_seg_file_name"]: d["file_name"]
                              for d in DatasetCatalog.get(dataset_name) if "sem_seg_file_name" in d}
        # pixels of the masks read so far whose label is a class (not ignore_label)
        self.labelled_pixels = 0

    def __call__(self, filename: str, dtype=int) -> np.ndarray:
        """Returns the mask [H, W] with class ids and ``ignore_label``, as ``dtype``.

        Raises:
            UnreadableGroundTruthError: the file is missing or does not decode.
            ValueError: the mask decodes but is wrong (channels, label values).
        """
        try:
            labels = read_mask_for_image(
                filename, image_path=self.image_of_mask[filename], label_map=self.label_map,
                num_classes=self.num_classes, ignore_value=self.ignore_label,
            )
        except (OSError, ValueError) as e:
            # the reader names the file and re-raises decoding failures as ValueError
            if isinstance(e, OSError) or isinstance(e.__cause__, OSError):
                raise UnreadableGroundTruthError(f"ground-truth mask {filename}: {e}") from e
            raise
        self.labelled_pixels += int((labels != self.ignore_label).sum())
        return labels.astype(dtype)


class SkippingSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (same arguments but ``sem_seg_loading_fn``) reading the ground truth
    with :class:`SemSegGroundTruthLoader`; an image whose mask cannot be read is logged, listed
    in :attr:`skipped` and left out of every metric."""

    def __init__(self, dataset_name: str, **kwargs):
        self.dataset_name = dataset_name
        self.ground_truth = SemSegGroundTruthLoader(dataset_name)
        super().__init__(dataset_name, sem_seg_loading_fn=self.ground_truth, **kwargs)
        self.skipped: List[str] = []

    def reset(self) -> None:
        super().reset()
        self.skipped = []
        self.ground_truth.labelled_pixels = 0
        self.evaluated = 0  # pairs counted in the confusion matrix on this process

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """Evaluate pair by pair: the mask is read before the pair touches any metric state, so
        a skipped pair leaves no trace in the confusion matrix."""
        for single_input, single_output in zip(inputs, outputs):
            try:
                super().process([single_input], [single_output])
                self.evaluated += 1
            except UnreadableGroundTruthError as e:
                logger.warning("Skipping %s in evaluation: %s", single_input["file_name"], e)
                self.skipped.append(single_input["file_name"])

    def evaluate(self):
        """The metrics of detectron2's evaluator.

        Raises:
            NothingToEvaluateError: on every process, when no process counted a labelled
                ground-truth pixel; names the dataset and how many images were evaluated.
        """
        if self.skipped:
            logger.warning(
                "%d images were skipped on this process because their ground truth could not be "
                "read: %s", len(self.skipped), ", ".join(self.skipped[:MAX_LISTED]),
            )
        counts = comm.all_gather((self.evaluated, len(self.skipped), self.ground_truth.labelled_pixels))
        evaluated, skipped, labelled = (sum(column) for column in zip(*counts))
        if labelled == 0:
            raise NothingToEvaluateError(
                f"evaluation of {self.dataset_name}: no labelled ground-truth pixel in the "
                f"{evaluated} images evaluated ({skipped} more skipped: unreadable mask; images "
                "the loader could not read are named in the warnings above); every mIoU, fwIoU, "
                "mACC and pACC would be NaN. Check that the masks hold class ids other than the "
                "ignore value and that the files are readable"
            )
        return super().evaluate()

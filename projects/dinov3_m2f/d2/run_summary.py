"""The summary a training run ends with: final metrics, and where its checkpoint, best checkpoint,
``metrics.json`` and TensorBoard events are."""
import glob
import logging
import os
from typing import Optional, Sequence

from detectron2.engine import HookBase
from fvcore.common.checkpoint import Checkpointer

from dinov3_m2f.d2.hooks import BestCheckpointer

logger = logging.getLogger(__name__)

__all__ = ["RunSummary"]

METRICS_FILE = "metrics.json"  # detectron2's JSONWriter
LAST_CHECKPOINT_FILE = "last_checkpoint"  # fvcore's Checkpointer
# The scalars the summary quotes, when the run stored them.
SUMMARY_METRICS = ("sem_seg/mIoU", "sem_seg/fwIoU", "sem_seg/mACC", "sem_seg/pACC", "total_loss")


class RunSummary(HookBase):
    """Log one summary after training (also after an error or a stop request of
    :class:`~dinov3_m2f.d2.trainer.SegTrainer`): the iterations run, the latest
    value of each of ``metrics`` with its iteration, and the paths of the newest checkpoint, the
    best checkpoint, ``metrics.json`` and the TensorBoard events. Register it last, on the main
    process, so that the final evaluation, writers and checkpoint have run."""

    def __init__(
        self,
        output_dir: str,
        checkpointer: Checkpointer,
        *,
        best_checkpointer: Optional[BestCheckpointer] = None,
        metrics: Sequence[str] = SUMMARY_METRICS,
    ):
        """
        Args:
            output_dir: the run's ``train.output_dir``.
            checkpointer: the run's checkpointer (its ``last_checkpoint``).
            best_checkpointer: the best-checkpoint hook, if any.
            metrics: storage keys to quote.
        """
        self._output_dir = output_dir
        self._checkpointer = checkpointer
        self._best = best_checkpointer
        self._metrics = tuple(metrics)

    def _lines(self):
        trainer, folder = self.trainer, self._output_dir
        if trainer.stopped_early:
            yield f"Training stopped after {trainer.iter} iterations: {trainer.stop_reason}"
        elif trainer.iter >= trainer.max_iter:
            yield f"Training finished: {trainer.iter} of {trainer.max_iter} iterations"
        else:
            yield f"Training ended with an error in iteration {trainer.iter} of {trainer.max_iter}"
        latest = trainer.storage.latest()
        for name in self._metrics:
            if name in latest:
                value, iteration = latest[name]
                yield f"  {name} = {value:.4f} (iteration {iteration})"
        if self._checkpointer.has_checkpoint():
            with open(os.path.join(self._checkpointer.save_dir, LAST_CHECKPOINT_FILE)) as f:
                newest = os.path.join(self._checkpointer.save_dir, f.read().strip())
            yield f"  checkpoint (--resume continues from it): {newest}"
        best = self._best
        if best is not None and best.best_metric is not None:
            yield (f"  best checkpoint: {os.path.join(folder, best.file_name)} ({best.val_metric}"
                   f" = {best.best_metric:.4f} at iteration {best.best_iter})")
        yield f"  metrics, one JSON line per logged iteration: {os.path.join(folder, METRICS_FILE)}"
        if glob.glob(os.path.join(folder, "events.out.tfevents.*")):
            yield f"  TensorBoard events in {folder}: tensorboard --logdir {folder}"

    def after_train(self) -> None:
        logger.info("\n".join(self._lines()))

"""Training hooks on top of detectron2's: checkpoints a resumed run continues from exactly, a
final checkpoint and no repeated evaluation after an early stop, a best checkpoint that survives
``--resume`` (and is never resumed from), and early stopping.

They expect :class:`~dinov3_m2f.d2.trainer.SegTrainer` (its stop request). Register them in
this order after the LR scheduler: ``SegEvalHook``, ``BestCheckpointer`` (main process),
``EarlyStopping`` (every process), the ``PeriodicWriter`` (main process), then
``SegPeriodicCheckpointer`` (main process): a checkpoint then holds the best value of its
iteration's evaluation, and ``metrics.json`` every entry up to it.
"""
import logging
import math
import operator
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from detectron2.engine import HookBase, hooks
from fvcore.common.checkpoint import Checkpointer
from detectron2.utils.events import EventWriter
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["BestCheckpointer", "EarlyStopping", "SegEvalHook", "SegPeriodicCheckpointer"]

# BestCheckpointer mode -> whether a value is better than the best so far.
BETTER = {"max": operator.gt, "min": operator.lt}


def _evaluates_after_step(trainer, eval_period: int) -> bool:
    """Whether ``EvalHook.after_step`` evaluates at the trainer's current iteration."""
    next_iter = trainer.iter + 1
    return eval_period > 0 and next_iter % eval_period == 0 and next_iter != trainer.max_iter


class SegPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's ``PeriodicCheckpointer`` that flushes ``writers`` (e.g. the ``metrics.json``
    writer) before each periodic checkpoint, so that a run resumed from it neither misses nor
    repeats an entry, and also writes ``model_final`` after an early stop."""

    def __init__(self, *args, writers: Sequence[EventWriter] = (), **kwargs):
        """
        Args:
            args, kwargs: as for detectron2's ``PeriodicCheckpointer``.
            writers: event writers to flush before each periodic checkpoint.
        """
        super().__init__(*args, **kwargs)
        self._writers = list(writers)

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self.period == 0:
            for writer in self._writers:
                writer.write()
        super().after_step()

    def after_train(self) -> None:
        if self.trainer.stopped_early:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=self.trainer.iter - 1)


class SegEvalHook(hooks.EvalHook):
    """detectron2's ``EvalHook`` without a final evaluation after an early stop: early stopping
    decides right after an evaluation in ``after_step``, whose results are already stored."""

    def __init__(self, eval_period: int, eval_function: Callable[[], Dict], **kwargs: Any):
        """
        Args:
            eval_period, eval_function, kwargs: as for detectron2's ``EvalHook``.
        """
        super().__init__(eval_period, eval_function, **kwargs)
        self.eval_period = eval_period

    def after_train(self) -> None:
        last = self.trainer.iter  # iterations run; the last evaluated one in after_step is last - 1
        if self.trainer.stopped_early and self.eval_period > 0 and last % self.eval_period == 0:
            logger.info("Iteration %d was just evaluated; no final evaluation", last - 1)
            return
        super().after_train()


class BestCheckpointer(HookBase):
    """Keep the checkpoint of the best value of a metric, checked after each evaluation (the
    iterations of ``EvalHook``, as detectron2's ``BestCheckpointer``); register it after the
    evaluation hook, on the main process, which holds the evaluation results.

    Unlike detectron2's, the best value is part of the trainer state, so it survives
    ``--resume``; the file is not recorded in ``last_checkpoint`` (``--resume`` continues from
    the newest periodic or final checkpoint); the best value is updated before the file is
    written (so the file's trainer state holds it); an evaluation that lacks the metric raises;
    and a NaN or infinite value is never the best (a warning names it). The file's
    ``iteration`` is that of the metric: ``max_iter`` for the final evaluation, as in
    detectron2's storage.
    """

    def __init__(self, eval_period: int, checkpointer: Checkpointer, val_metric: str,
                 mode: str = "max", file_prefix: str = "model_best"):
        """
        Args:
            eval_period: the period of the evaluation hook.
            checkpointer: writes the file (``save(name, tag_last=..., iteration=...)``).
            val_metric: the storage key of the metric, e.g. ``"sem_seg/mIoU"``.
            mode: ``"max"`` or ``"min"``: which values are better.
            file_prefix: the file name without ``.pth``.
        """
        if mode not in BETTER:
            raise ValueError(f"mode must be one of {sorted(BETTER)}, got {mode!r}")
        self.eval_period = eval_period
        self.checkpointer = checkpointer
        self.val_metric = val_metric
        self.better = BETTER[mode]
        self.file_prefix = file_prefix
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None

    def after_step(self) -> None:
        if _evaluates_after_step(self.trainer, self.eval_period):
            self._check()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:  # the final evaluation ran
            self._check()

    def _check(self) -> None:
        latest = self.trainer.storage.latest().get(self.val_metric)
        if latest is None:
            raise KeyError(
                f"best checkpoint: the evaluation stored no '{self.val_metric}' "
                "(metric names look like 'sem_seg/mIoU')"
            )
        value, iteration = latest
        previous, previous_iter = self.best_metric, self.best_iter
        if not math.isfinite(value):
            logger.warning(
                "%s=%s at iteration %d is NaN or infinite; it is never the best (kept: %s at "
                "iteration %s)", self.val_metric, value, iteration, previous, previous_iter,
            )
        elif previous is not None and not self.better(value, previous):
            logger.info(
                "%s=%.5f at iteration %d is not better than %.5f at iteration %d",
                self.val_metric, value, iteration, previous, previous_iter,
            )
        else:
            self.best_metric, self.best_iter = value, iteration
            self.checkpointer.save(self.file_prefix, tag_last=False, iteration=iteration)
            logger.info(
                "New best %s=%.5f at iteration %d (previous: %s); saved %s.pth",
                self.val_metric, value, iteration, previous, self.file_prefix,
            )

    @property
    def file_name(self) -> str:
        """The best checkpoint's file name in the checkpointer's folder."""
        return f"{self.file_prefix}.pth"

    def state_dict(self) -> Dict[str, Any]:
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.best_metric = state_dict["best_metric"]
        self.best_iter = state_dict["best_iter"]


class EarlyStopping(HookBase):
    """Ask the trainer to stop after ``patience`` evaluations in a row without a new best value.

    The best value and its iteration are the :class:`BestCheckpointer`'s, so this hook has no
    state of its own and follows a resumed run. Register it after that hook, on every process:
    the main process decides and all of them stop together.
    """

    def __init__(
        self, best_checkpointer: Optional[BestCheckpointer], *, eval_period: int, patience: int
    ):
        """
        Args:
            best_checkpointer: the run's best checkpointer on the main process; None elsewhere.
            eval_period: the period of the evaluation hook (> 0).
            patience: evaluations without improvement that end training (>= 1).

        ``TrainSchema`` checks ``train.early_stopping`` and ``train.eval_period`` when the config
        loads.
        """
        if comm.is_main_process() and best_checkpointer is None:
            raise ValueError("early stopping needs the best checkpointer on the main process")
        self._best = best_checkpointer
        self._period = eval_period
        self._patience = patience

    def _evaluations_without_improvement(self) -> Optional[int]:
        if self._best is None:
            return None  # not the main process: the decision comes from it
        best_iter = self._best.best_iter if self._best.best_iter is not None else -1
        stale = (self.trainer.iter - best_iter) // self._period
        logger.info(
            "Early stopping: %d/%d evaluations without improvement (best %s at iteration %d)",
            stale, self._patience, self._best.best_metric, best_iter,
        )
        return stale

    def after_step(self) -> None:
        if not _evaluates_after_step(self.trainer, self._period):
            return
        stale = comm.all_gather(self._evaluations_without_improvement())[0]  # the main process'
        if stale >= self._patience:
            self.trainer.request_stop(
                f"early stopping: the metric did not improve for {self._patience} evaluations"
            )

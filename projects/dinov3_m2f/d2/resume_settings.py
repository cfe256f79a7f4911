"""What a resumed run takes from its config and what from its checkpoint.

The checkpoint restores the weights, the optimizer's moments and the position in the schedule;
the config restores everything it describes: the optimizer's hyperparameters (learning rate,
weight decay, betas, ...) of each parameter group are the config's after a resume, so the
``config.yaml`` written for the run describes what trains. The LR schedule then continues at
its position from the config's base learning rate. Resuming with another dataset size, batch
size or gradient accumulation is allowed, with a warning naming both values: the samples of the
remaining iterations are then no longer those of the uninterrupted run.
"""
import logging
from typing import Any, Dict, List, Mapping

from detectron2.engine import HookBase
from torch.optim import Optimizer

logger = logging.getLogger(__name__)

__all__ = ["ResumeSettings"]

# The parameter-group key holding the schedule's base learning rate once a scheduler ran.
BASE_LR_KEY = "initial_lr"


def _hyperparameters(group: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


class ResumeSettings(HookBase):
    """Make the config's optimizer hyperparameters apply after a resume (logging each value that
    differs from the checkpoint's), and warn when the data settings (``data_settings``, stored
    in the checkpoint's trainer state) differ from those of the checkpoint's run.

    Build it before the checkpoint is loaded (it records the optimizer's groups as the config
    built them) and register it before detectron2's ``LRScheduler`` hook, whose ``before_train``
    reads the base learning rates.
    """

    def __init__(self, optimizer: Optimizer, *, data_settings: Mapping[str, int]):
        """
        Args:
            optimizer: the run's optimizer, before any checkpoint is loaded into it.
            data_settings: what fixes the data order, e.g. ``dataset_size``,
                ``total_batch_size`` and ``grad_accum_steps``.
        """
        self._optimizer = optimizer
        self._configured: List[Dict[str, Any]] = [
            _hyperparameters(g) for g in optimizer.param_groups
        ]
        self._data_settings = dict(data_settings)

    def before_train(self) -> None:
        changed = []
        for index, (group, configured) in enumerate(
            zip(self._optimizer.param_groups, self._configured)
        ):
            for key, value in configured.items():
                current = group.get(BASE_LR_KEY, group[key]) if key == "lr" else group.get(key)
                if current != value:
                    changed.append(f"{key} {current} -> {value} (group {index})")
                group[key] = value
            if BASE_LR_KEY in group:
                group[BASE_LR_KEY] = configured["lr"]
        if changed:
            logger.warning(
                "The config's optimizer values apply, not the checkpoint's (the schedule continues "
                "at iteration %d): %s", self.trainer.iter, "; ".join(changed),
            )

    def state_dict(self) -> Dict[str, int]:
        return dict(self._data_settings)

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        differences = [
            f"{key} {state_dict[key]} in the checkpoint's run, {value} now"
            for key, value in self._data_settings.items()
            if key in state_dict and state_dict[key] != value
        ]
        if differences:
            logger.warning(
                "Resuming with other data settings: %s. Training continues, but the data order is "
                "no longer that of an uninterrupted run (the exact-resume guarantee does not hold)",
                "; ".join(differences),
            )

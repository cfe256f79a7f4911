"""The start of a ``tools/train_net.py`` run: logging into the output directory, the output
directory lock (training only), and the saved config, without letting ``--eval-only`` overwrite
the ``config.yaml`` of the training run that wrote the folder."""
import logging
import os
from typing import Optional

from detectron2.config import LazyConfig
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from omegaconf import DictConfig

from dinov3_m2f.run_lock import OutputDirLockedError, RunLock, acquire_output_lock

from .logging_setup import setup_run_logging

logger = logging.getLogger(__name__)

__all__ = ["EVAL_CONFIG_FILE", "claim_output_dir", "setup_run"]

# What --eval-only saves its config as (config.yaml describes the training run).
EVAL_CONFIG_FILE = "config_eval.yaml"


def claim_output_dir(output_dir: str, *, force: bool = False) -> Optional[RunLock]:
    """Lock ``output_dir`` on the main process; every process raises when it is refused.

    Returns:
        The lock on the main process, None on the others.

    Raises:
        OutputDirLockedError: on every process, with the main process' message.
    """
    lock, error = None, None
    if comm.is_main_process():
        try:
            lock = acquire_output_lock(output_dir, force=force)
        except OutputDirLockedError as e:
            error = str(e)
    error = comm.all_gather(error)[0]  # the main process'
    if error is not None:
        raise OutputDirLockedError(error)
    return lock


def setup_run(cfg: DictConfig, args) -> Optional[RunLock]:
    """Set up logging (``log.txt`` in ``train.output_dir``), lock the folder and save the config.

    Training: :func:`claim_output_dir`, then detectron2's ``default_setup`` (``config.yaml``).
    ``--eval-only``: no lock; the config goes to ``config_eval.yaml``.

    Args:
        cfg: the loaded config.
        args: the command line (``eval_only``, ``force_output_dir``).

    Returns:
        The lock to release at the end of the run (main process, training), else None.
    """
    output_dir, rank = cfg.train.output_dir, comm.get_rank()
    setup_run_logging(output_dir, rank=rank)
    if not args.eval_only:
        lock = claim_output_dir(output_dir, force=args.force_output_dir)
        default_setup(cfg, args)
        return lock
    logger.info("Rank %d of %d. Command line arguments: %s", rank, comm.get_world_size(), args)
    logger.info("Environment info:\n%s", collect_env_info())
    if comm.is_main_process():
        path = os.path.join(output_dir, EVAL_CONFIG_FILE)
        LazyConfig.save(cfg, path)
        logger.info("Evaluation config saved to %s (config.yaml is left as training wrote it)", path)
    seed_all_rng(cfg.train.seed + rank)  # as default_setup seeds
    return None

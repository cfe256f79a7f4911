#!/usr/bin/env python
"""Train or evaluate a DINOv3 + Mask2Former semantic segmentation model from a LazyConfig.

The config provides:
    model                     instantiates to the segmentation model
    dataloader.train / .test  instantiate to data loaders
    dataloader.evaluator      instantiates to the evaluator of the test set
    optimizer                 its ``params.model`` is set to the model before instantiation
    lr_multiplier             an fvcore ParamScheduler (warmup + poly)
    train                     the keys of ``TrainSchema`` (``dinov3_m2f/config_schema.py``: the
                              defaults, types and ranges, checked at load time)

``--resume`` continues from the checkpoint named in ``train.output_dir/last_checkpoint`` (the
newest periodic or final one) exactly as an uninterrupted run would have; without a checkpoint
there it says so and starts from ``train.init_checkpoint``, so a preemptible job can always pass
``--resume``. The config's optimizer values apply after a resume; other data settings give a
warning (docs/training_resume.md). A training run locks ``train.output_dir`` (``run.lock``;
``--force-output-dir`` overrides) and ends with a summary of its metrics and files;
``--eval-only`` saves its config as ``config_eval.yaml``, leaving the training ``config.yaml``.

Processes: ``--num-gpus N`` starts N per machine (``--num-machines``, ``--machine-rank``,
``--dist-url``); under ``torchrun`` or ``srun`` this process joins the group they describe. A
signal of ``train.preemption_signals`` (SIGTERM, SIGUSR1, SIGINT) saves a checkpoint after the
current iteration and exits with code 75 (requeue the job, then ``--resume``); see
docs/cluster.md.

Examples:
    python tools/train_net.py --config-file configs/synthetic/m2f_tiny_synthetic.py
    python tools/train_net.py --config-file configs/loveda/m2f_vitl16_sat493m_512.py --num-gpus 8 \
        model.backbone.weights=/ckpt/dinov3_vitl16_sat493m.pth
    python tools/train_net.py --config-file <cfg> --resume
    python tools/train_net.py --config-file <cfg> --eval-only train.init_checkpoint=<model.pth>
    torchrun --nproc_per_node 8 tools/train_net.py --config-file <cfg> --resume
"""
import argparse
import logging
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

import dinov3_m2f.d2  # noqa: F401  before detectron2: imports it without its import-time warnings
from detectron2.config import instantiate
from detectron2.engine import (
    create_ddp_model,
    default_argument_parser,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from omegaconf import DictConfig
from torch import nn

from dinov3_m2f.config_schema import AMP_DTYPES
from dinov3_m2f.d2.checkpoint import TrainableCheckpointer
from dinov3_m2f.d2.config import load_config
from dinov3_m2f.d2.config_agreement import check_same_config
from dinov3_m2f.d2.evaluation import results_to_json
from dinov3_m2f.d2.hooks import BestCheckpointer, EarlyStopping, SegEvalHook, SegPeriodicCheckpointer
from dinov3_m2f.d2.launch import DEFAULT_DIST_TIMEOUT_S, launch, process_group_backend
from dinov3_m2f.d2.preemption import PreemptionHook, active_request
from dinov3_m2f.d2.resume_settings import ResumeSettings
from dinov3_m2f.d2.run_setup import setup_run
from dinov3_m2f.d2.run_summary import METRICS_FILE, RunSummary
from dinov3_m2f.d2.trainer import SegTrainer, resolve_device
from dinov3_m2f.modeling.torch_compile import compile_parts
from dinov3_m2f.training import frozen_state_prefixes, set_trainable
from dinov3_m2f.metrics_log import drop_metrics_from

logger = logging.getLogger("detectron2")

EVAL_RESULTS_FILE = "eval_results.json"


def do_test(cfg: DictConfig, model: nn.Module) -> Dict:
    """Run the evaluator of ``cfg.dataloader`` on the test loader and log the results.

    Inference runs under autocast when ``train.amp.enabled``.
    """
    device = resolve_device(cfg.train.device)
    amp = cfg.train.amp
    with torch.autocast(device.type, dtype=AMP_DTYPES[amp.dtype], enabled=amp.enabled):
        results = inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_model(cfg: DictConfig) -> Tuple[nn.Module, torch.device]:
    """Instantiate ``cfg.model`` on this process' device; with ``train.compile``, its backbone and
    head are compiled in place (before any DDP wrapping; state-dict keys unchanged).

    Returns:
        The model and its device.
    """
    device = resolve_device(cfg.train.device)
    model = instantiate(cfg.model)
    model.to(device)
    compile_parts(model, cfg.train.compile)
    logger.info("Model:\n%s", model)
    return model, device


def wrap_ddp(model: nn.Module, device: torch.device, **ddp_kwargs) -> nn.Module:
    """detectron2's ``create_ddp_model``; CPU modules get ``device_ids=None`` (DDP rejects ids)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return create_ddp_model(model, device_ids=device_ids, **ddp_kwargs)


def build_training_hooks(
    cfg: DictConfig,
    checkpointer: TrainableCheckpointer,
    eval_function: Callable[[], Dict],
    resume_settings: ResumeSettings,
) -> List[Optional[hooks.HookBase]]:
    """The hooks of a training run, in execution order.

    ``resume_settings`` comes before the LR scheduler (the base learning rates it restores);
    the best checkpoint and early stopping come after the evaluation whose results they read;
    the preemption hook (a checkpoint and exit after a signal) comes after the evaluation and
    before the writers; the periodic checkpoint comes after the metrics of its iteration are
    written, so that a run resumed from it continues exactly (best value, ``metrics.json``); the
    summary comes last.
    Hooks that only the main process runs are None elsewhere (``register_hooks`` drops them).
    """
    train = cfg.train
    main = comm.is_main_process()
    best = None
    if train.best_checkpoint is not None and main:
        best = BestCheckpointer(
            train.eval_period, checkpointer, train.best_checkpoint.metric, train.best_checkpoint.mode
        )
    writers = default_writers(train.output_dir, train.max_iter) if main else []
    # the files (metrics.json, TensorBoard) are flushed before each periodic checkpoint
    files = [w for w in writers if not isinstance(w, CommonMetricPrinter)]
    return [
        hooks.IterationTimer(),
        resume_settings,
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        SegEvalHook(train.eval_period, eval_function),
        best,
        EarlyStopping(best, eval_period=train.eval_period, **train.early_stopping)
        if train.early_stopping is not None
        else None,
        PreemptionHook(active_request(), checkpointer=checkpointer if main else None, writers=files),
        hooks.PeriodicWriter(writers, period=train.log_period) if main else None,
        SegPeriodicCheckpointer(checkpointer, **train.checkpointer, writers=files) if main else None,
        RunSummary(train.output_dir, checkpointer, best_checkpointer=best) if main else None,
    ]


def load_start_state(args, cfg: DictConfig, checkpointer: TrainableCheckpointer) -> int:
    """Load the checkpoint to resume from, else ``train.init_checkpoint`` (strictly unless
    ``train.init_partial``); drop the ``metrics.json`` entries the run will write again.

    Returns:
        The first iteration to run.
    """
    resuming = args.resume and checkpointer.has_checkpoint()
    if args.resume and not resuming:
        init = cfg.train.init_checkpoint
        logger.warning(
            "--resume: no checkpoint in %s (no last_checkpoint file); starting from iteration 0 %s",
            cfg.train.output_dir, f"with weights from {init}" if init else "from the model's initialisation",
        )
    # Resuming must restore every trainable weight; an init checkpoint too, unless asked otherwise.
    checkpointer.strict = resuming or not cfg.train.init_partial
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint stores the iteration that just finished.
    start_iter = checkpointer.checkpointables["trainer"].iter + 1 if resuming else 0
    if comm.is_main_process():
        drop_metrics_from(os.path.join(cfg.train.output_dir, METRICS_FILE), start_iter)
    return start_iter


def do_train(args, cfg: DictConfig) -> SegTrainer:
    """Train with periodic checkpoints and evaluation; resume when ``args.resume``.

    Returns:
        The trainer after training (its ``model`` holds this process' final weights).
    """
    model, device = build_model(cfg)
    # Frozen by construction (rebuilt from the config): left out of trainable-only checkpoints.
    rebuilt_prefixes = frozen_state_prefixes(model)
    frozen_by_config = set_trainable(
        model, trainable=cfg.train.trainable, freeze=cfg.train.freeze
    )
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    eval_modules = [model.get_submodule(name) for name in frozen_by_config]
    model = wrap_ddp(model, device, **cfg.train.ddp)
    trainer = SegTrainer(
        model,
        train_loader,
        optimizer,
        device=device,
        amp_dtype=cfg.train.amp.dtype if cfg.train.amp.enabled else None,
        clip_grad_max_norm=cfg.train.clip_grad.max_norm if cfg.train.clip_grad.enabled else 0.0,
        clip_grad_norm_type=cfg.train.clip_grad.norm_type,
        grad_accum_steps=cfg.train.grad_accum_steps,
        eval_modules=eval_modules,
        seed=cfg.train.seed,
    )
    checkpointer = TrainableCheckpointer(
        model,
        cfg.train.output_dir,
        full=cfg.train.full_checkpoint,
        exclude_prefixes=rebuilt_prefixes,
        trainer=trainer,
    )
    data_settings = dict(dataset_size=len(train_loader.dataset.dataset),
                         total_batch_size=cfg.dataloader.train.total_batch_size,
                         grad_accum_steps=cfg.train.grad_accum_steps)
    resume_settings = ResumeSettings(optimizer, data_settings=data_settings)
    trainer.register_hooks(
        build_training_hooks(cfg, checkpointer, lambda: do_test(cfg, model), resume_settings)
    )

    start_iter = load_start_state(args, cfg, checkpointer)
    # the data stream continues after the micro-batches of the iterations done
    train_loader.dataset.start_batch = start_iter * cfg.train.grad_accum_steps
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def do_eval_only(cfg: DictConfig) -> Dict:
    """Load ``train.init_checkpoint`` (trainable-only or full) strictly and evaluate."""
    if not cfg.train.init_checkpoint:
        raise ValueError("--eval-only needs a checkpoint: pass train.init_checkpoint=<path>")
    model, device = build_model(cfg)
    model = wrap_ddp(model, device)
    TrainableCheckpointer(model, strict=True).load(cfg.train.init_checkpoint)
    results = do_test(cfg, model)
    if comm.is_main_process():
        path = os.path.join(cfg.train.output_dir, EVAL_RESULTS_FILE)
        with open(path, "w") as f:
            f.write(results_to_json(results))
        logger.info("Evaluation results written to %s", path)
    return results


def main(args) -> None:
    cfg = load_config(args.config_file, overrides=args.opts)
    check_same_config(cfg)
    lock = setup_run(cfg, args)
    try:
        if args.eval_only:
            do_eval_only(cfg)
        else:
            do_train(args, cfg)
    finally:
        if lock is not None:
            lock.release()


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` with ``--force-output-dir`` and ``--dist-timeout``."""
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--force-output-dir", action="store_true",
        help="train even if train.output_dir/run.lock names another run (see "
             "docs/training_resume.md)",
    )
    parser.add_argument(
        "--dist-timeout", type=float, default=DEFAULT_DIST_TIMEOUT_S, metavar="SECONDS",
        help="how long the start-up waits for every process (and any collective may wait) "
        f"before failing with a message (default {DEFAULT_DIST_TIMEOUT_S} s)",
    )
    return parser


def invoke_main() -> None:
    args = argument_parser().parse_args()
    # the launcher needs the signals and the device before any worker loads the config
    cfg = load_config(args.config_file, overrides=args.opts)
    launch(
        main,
        (args,),
        num_processes=args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        timeout_s=args.dist_timeout,
        backend=process_group_backend(cfg.train.device),
        preemption_signals=[] if args.eval_only else list(cfg.train.preemption_signals),
    )


if __name__ == "__main__":
    invoke_main()

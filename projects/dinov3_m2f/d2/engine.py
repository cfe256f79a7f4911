"""Training loop pieces: a trainer with AMP (fp16/bf16), gradient accumulation, global grad
clipping, a distributed non-finite-loss stop and clean early stopping; the hooks for best
checkpoints and early stopping; device/DDP helpers that also work on CPU (gloo)."""
import contextlib
import logging
import math
import operator
import re
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.engine import HookBase, SimpleTrainer, hooks
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Device strings accepted by resolve_device besides "auto".
DEVICE_PATTERN = r"cpu|cuda(:\d+)?"
# Comparison "is better than" of a validation metric, by mode.
METRIC_MODES = {"max": operator.gt, "min": operator.lt}


def resolve_device(name: str) -> torch.device:
    """Turn a device string (config or command line) into a device for this process.

    Args:
        name: ``"cpu"``, ``"cuda"`` (the GPU of this process' local rank), ``"cuda:<i>"`` or
            ``"auto"`` (``"cuda"`` when CUDA is available, else ``"cpu"``).

    Returns:
        The device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<i>' or 'auto', got {name!r}")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device if device.index is not None else torch.device("cuda", comm.get_local_rank())


def wrap_ddp(model: nn.Module, *, device: torch.device, **ddp_kwargs) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when more than one process runs.

    Unlike detectron2's ``create_ddp_model``, CPU models get ``device_ids=None`` (DDP rejects
    device ids for CPU modules).

    Args:
        model: the model, already on ``device``.
        device: the device of this process.
        ddp_kwargs: DistributedDataParallel arguments; ``fp16_compression=True`` registers the
            fp16 gradient compression hook.

    Returns:
        ``model`` or the DDP wrapper.
    """
    if comm.get_world_size() == 1:
        return model
    fp16_compression = ddp_kwargs.pop("fp16_compression", False)
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


class SegTrainer(SimpleTrainer):
    """SimpleTrainer with autocast, gradient accumulation, global gradient clipping, a finite-loss
    check and early stopping.

    One iteration is one optimizer step over ``grad_accum_steps`` micro-batches (one data-loader
    batch each): each micro-batch loss is divided by ``grad_accum_steps`` before ``backward`` and
    DDP synchronizes gradients only on the last one; clipping and the step happen once. The
    logged losses are the micro-batch mean.

    The loss check runs on every rank (one all-reduce of a flag) before each ``backward``, so a
    non-finite loss stops all processes together with ``FloatingPointError`` naming the
    iteration, before the optimizer step and before any checkpoint hook of that iteration.

    A hook may call :meth:`request_stop` (e.g. early stopping): the current iteration finishes
    with all its hooks, then training ends as if ``max_iter`` were the next iteration (final
    checkpoint and final evaluation behave as at a normal end).
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        amp_dtype: Optional[str] = None,
        clip_grad_max_norm: float = 0.0,
        clip_grad_norm_type: float = 2.0,
        grad_accum_steps: int = 1,
        eval_modules: Sequence[nn.Module] = (),
    ):
        """
        Args:
            model: the (possibly DDP-wrapped) model returning a dict of losses in train mode.
            data_loader: iterable of batches.
            optimizer: the optimizer.
            device: device the model runs on (selects the autocast device type).
            amp_dtype: None (fp32), "float16" (with a GradScaler) or "bfloat16".
            clip_grad_max_norm: clip the global L-p gradient norm of all optimized parameters
                to this value; 0 disables clipping.
            clip_grad_norm_type: the p of the norm.
            grad_accum_steps: micro-batches per optimizer step (>= 1).
            eval_modules: modules kept in eval mode during training (modules frozen by the
                config: their BatchNorm statistics and dropout stay fixed).
        """
        super().__init__(model, data_loader, optimizer)
        if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
            raise ValueError(
                f"amp_dtype must be one of {sorted(AMP_DTYPES)} or None, got {amp_dtype!r}"
            )
        if clip_grad_max_norm < 0:
            raise ValueError(f"clip_grad_max_norm must be >= 0, got {clip_grad_max_norm}")
        if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be an int >= 1, got {grad_accum_steps!r}")
        self.device = device
        self.amp_dtype = AMP_DTYPES[amp_dtype] if amp_dtype else None
        # Only fp16 needs loss scaling; bf16 has the fp32 exponent range.
        self.grad_scaler = (
            torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        )
        self.clip_grad_max_norm = clip_grad_max_norm
        # clip_grad_norm_ skips parameters without a gradient.
        self._clip_params = [p for group in optimizer.param_groups for p in group["params"]]
        self.clip_grad_norm_type = clip_grad_norm_type
        self.grad_accum_steps = grad_accum_steps
        self.eval_modules = list(eval_modules)
        self.stop_reason: Optional[str] = None

    def _check_finite(self, losses: torch.Tensor, loss_dict) -> None:
        finite = torch.isfinite(losses.detach()).to(torch.float32).reshape(1)
        if comm.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration {self.iter} (on at least one rank); "
                f"stopping before the optimizer step and without checkpointing. "
                f"Losses on this rank: {values}"
            )

    def request_stop(self, reason: str) -> None:
        """End training after the current iteration (all ranks must call it together).

        Args:
            reason: logged when training stops.
        """
        self.stop_reason = reason

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` unless :meth:`request_stop` ends earlier.

        Same hook protocol as detectron2's ``TrainerBase.train``; after an early stop
        ``self.max_iter`` is the number of iterations actually run.
        """
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.stop_reason = None
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self.stop_reason is not None:
                        logger.info(
                            "Stopping after iteration %d of %d: %s",
                            self.iter,
                            max_iter,
                            self.stop_reason,
                        )
                        self.max_iter = self.iter + 1
                        break
                # iter == max_iter tells the hooks' after_train that training completed.
                self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def _sync_context(self, micro_step: int) -> contextlib.AbstractContextManager:
        """DDP gradient all-reduce only on the last micro-batch of a step."""
        is_last = micro_step == self.grad_accum_steps - 1
        if is_last or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def run_step(self) -> None:
        """One iteration: per micro-batch forward (autocast), finite check, scaled backward; then
        clip and one optimizer step."""
        if not self.model.training:
            raise RuntimeError("SegTrainer: the model was switched to eval mode during training")
        for module in self.eval_modules:
            module.eval()
        self.optimizer.zero_grad(set_to_none=True)
        data_time = 0.0
        summed: Dict[str, torch.Tensor] = {}
        for micro_step in range(self.grad_accum_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            with self._sync_context(micro_step):
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    loss_dict = self.model(data)
                losses = sum(loss_dict.values())
                self._check_finite(losses, loss_dict)
                losses = losses / self.grad_accum_steps
                if self.grad_scaler is not None:
                    self.grad_scaler.scale(losses).backward()
                else:
                    losses.backward()
            for name, value in loss_dict.items():
                summed[name] = summed.get(name, 0.0) + value.detach() / self.grad_accum_steps
        self.after_backward()
        self._write_metrics(summed, data_time)

        if self.clip_grad_max_norm > 0:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                self._clip_params, self.clip_grad_max_norm, norm_type=self.clip_grad_norm_type
            )
            self.storage.put_scalar("grad_norm", float(grad_norm), smoothing_hint=False)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _is_eval_iteration(trainer, eval_period: int) -> bool:
    """Whether ``EvalHook.after_step`` evaluated at the trainer's current iteration."""
    next_iter = trainer.iter + 1
    return eval_period > 0 and next_iter % eval_period == 0 and next_iter != trainer.max_iter


class SegEvalHook(hooks.EvalHook):
    """``EvalHook`` that does not repeat an evaluation of the same weights after training.

    After an early stop, the last iteration has just been evaluated by ``after_step``; the final
    evaluation in ``after_train`` is then skipped (its results are already stored).
    """

    def __init__(self, eval_period: int, eval_function):
        super().__init__(eval_period, eval_function)
        self._last_eval_iter: Optional[int] = None

    def _do_eval(self) -> None:
        super()._do_eval()
        self._last_eval_iter = self.trainer.iter

    def after_train(self) -> None:
        last_iter = self.trainer.max_iter - 1
        if self.trainer.iter == self.trainer.max_iter and self._last_eval_iter == last_iter:
            logger.info("Iteration %d was already evaluated; no final evaluation", last_iter)
            self._eval_after_train = False
        super().after_train()


class SegPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """``PeriodicCheckpointer`` that also writes ``model_final`` when training stops early."""

    def after_train(self) -> None:
        stopped_early = self.trainer.max_iter < self.max_iter
        if stopped_early and self.trainer.iter == self.trainer.max_iter:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=self.trainer.iter - 1)


class _BestValue:
    """The best value of a metric so far and its iteration."""

    def __init__(self, mode: str):
        if mode not in METRIC_MODES:
            raise ValueError(f"metric mode must be one of {sorted(METRIC_MODES)}, got {mode!r}")
        self._better = METRIC_MODES[mode]
        self.value: Optional[float] = None
        self.iteration: Optional[int] = None

    def update(self, value: float, iteration: int) -> bool:
        """Record ``value`` if it is finite and better than the best; return whether it was."""
        if not math.isfinite(value):
            return False
        if self.value is not None and not self._better(value, self.value):
            return False
        self.value, self.iteration = value, iteration
        return True

    def describe(self) -> str:
        return f"{self.value:.5f} at iteration {self.iteration}" if self.value is not None else "none"

    def state_dict(self) -> Dict[str, Any]:
        return {"best_metric": self.value, "best_iter": self.iteration}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.value = state_dict["best_metric"]
        self.iteration = state_dict["best_iter"]


def _read_metric(trainer, name: str, hook: str, *, fresh: bool) -> Tuple[float, int]:
    """The latest ``(value, iteration)`` of metric ``name`` in the trainer's storage.

    Args:
        fresh: require a value stored at the current iteration (by this step's evaluation).
    """
    entry = trainer.storage.latest().get(name)
    if entry is None or (fresh and entry[1] != trainer.storage.iter):
        raise KeyError(
            f"{hook}: the evaluation stored no '{name}' at iteration {trainer.storage.iter} "
            "(metric names look like 'sem_seg/mIoU')"
        )
    return float(entry[0]), int(entry[1])


class BestCheckpointer(HookBase):
    """Save ``{file_prefix}.pth`` whenever an evaluation improves a metric.

    Register it after the evaluation hook, on the main process, with the run's
    :class:`TrainableCheckpointer` (same trainable-only, atomic files; the ``iteration`` stored is
    the evaluated one). The best value is part of the trainer state, so it survives ``--resume``.
    """

    def __init__(
        self,
        *,
        eval_period: int,
        checkpointer,
        metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ):
        """
        Args:
            eval_period: the period of the evaluation hook (0: only the final evaluation).
            checkpointer: the checkpointer that writes the file.
            metric: flattened metric name, e.g. ``"sem_seg/mIoU"``.
            mode: "max" (higher is better) or "min".
            file_prefix: file name without extension.
        """
        self._eval_period = eval_period
        self._checkpointer = checkpointer
        self._metric = metric
        self._file_prefix = file_prefix
        self.best = _BestValue(mode)
        self._last_checked: Optional[int] = None

    def _check(self, *, fresh: bool, iteration: int) -> None:
        """Compare the latest evaluation (of the weights after ``iteration``) with the best."""
        value, stored_at = _read_metric(self.trainer, self._metric, "best checkpoint", fresh=fresh)
        if self._last_checked == stored_at:
            return  # e.g. after an early stop: the last evaluation was already checked
        self._last_checked = stored_at
        previous = self.best.describe()
        if self.best.update(value, iteration):
            self._checkpointer.save(self._file_prefix, iteration=iteration)
            logger.info(
                "New best %s=%.5f at iteration %d (previous best: %s); saved %s.pth",
                self._metric, value, iteration, previous, self._file_prefix,
            )
        else:
            logger.info(
                "%s=%.5f at iteration %d is not better than %s",
                self._metric, value, iteration, previous,
            )

    def after_step(self) -> None:
        if _is_eval_iteration(self.trainer, self._eval_period):
            self._check(fresh=True, iteration=self.trainer.iter)

    def after_train(self) -> None:
        # Only after a completed run, when the final evaluation stored its results (the storage
        # may have moved past the last iteration; the weights are those after max_iter - 1).
        if self.trainer.iter == self.trainer.max_iter:
            self._check(fresh=False, iteration=self.trainer.max_iter - 1)

    def state_dict(self) -> Dict[str, Any]:
        return self.best.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.best.load_state_dict(state_dict)


class EarlyStopping(HookBase):
    """Stop training after ``patience`` evaluations in a row without improvement of a metric.

    Register it after the evaluation hook (it reads the metric that hook just stored) and on every
    rank (every rank must stop together; the metric is the same on all of them). The counter and
    the best value are part of the trainer state, so they survive ``--resume``.
    """

    def __init__(self, *, eval_period: int, metric: str, mode: str = "max", patience: int):
        """
        Args:
            eval_period: the period of the evaluation hook.
            metric: flattened metric name, e.g. ``"sem_seg/mIoU"``.
            mode: "max" (higher is better) or "min".
            patience: number of evaluations without improvement that ends training (>= 1).
        """
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"early stopping patience must be an int >= 1, got {patience!r}")
        if eval_period <= 0:
            raise ValueError("early stopping needs periodic evaluation: set train.eval_period > 0")
        self._eval_period = eval_period
        self._metric = metric
        self._patience = patience
        self.best = _BestValue(mode)
        self.num_bad_evals = 0

    def after_step(self) -> None:
        if not _is_eval_iteration(self.trainer, self._eval_period):
            return
        value, _ = _read_metric(self.trainer, self._metric, "early stopping", fresh=True)
        if self.best.update(value, self.trainer.iter):
            self.num_bad_evals = 0
            return
        self.num_bad_evals += 1
        logger.info(
            "Early stopping: %s=%.5f at iteration %d, best %s; %d/%d evaluations without improvement",
            self._metric, value, self.trainer.iter, self.best.describe(),
            self.num_bad_evals, self._patience,
        )
        if self.num_bad_evals >= self._patience:
            self.trainer.request_stop(
                f"early stopping: {self._metric} did not improve for {self._patience} "
                f"evaluations (best {self.best.describe()})"
            )

    def state_dict(self) -> Dict[str, Any]:
        return {**self.best.state_dict(), "num_bad_evals": self.num_bad_evals}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.best.load_state_dict(state_dict)
        self.num_bad_evals = state_dict["num_bad_evals"]

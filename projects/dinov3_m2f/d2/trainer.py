"""The training loop (detectron2's ``SimpleTrainer`` with autocast, gradient accumulation,
clipping, per-iteration seeding, a non-finite-loss check and stop requests) and the device of this
process."""
import contextlib
import logging
import time
from typing import Dict, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dinov3_m2f.config_schema import AMP_DTYPES
from dinov3_m2f.data.sampling import derive_seed
from dinov3_m2f.devices import parse_device

logger = logging.getLogger(__name__)

__all__ = ["SegTrainer", "resolve_device"]

DIVERGENCE_HINT = (
    "Likely causes: a learning rate too high for this model and batch size (optimizer.lr, "
    "lr_multiplier warmup), or float16 overflow under autocast (use train.amp.dtype=bfloat16 or "
    "train.amp.enabled=False)."
)


def resolve_device(name: str) -> torch.device:
    """:func:`dinov3_m2f.devices.parse_device` with ``"cuda"`` meaning the GPU of this process'
    local rank."""
    return parse_device(name, local_rank=comm.get_local_rank())


class _StopTraining(BaseException):
    """Ends ``TrainerBase.train`` after a stop request: a ``BaseException`` (like
    ``KeyboardInterrupt``) is not logged as a failure, and ``after_train`` still runs."""


class SegTrainer(SimpleTrainer):
    """SimpleTrainer with autocast, gradient accumulation, global gradient clipping, per-iteration
    seeding, a finite-loss check and stop requests.

    One iteration is one optimizer step over ``grad_accum_steps`` micro-batches (one data-loader
    batch each, loss divided by ``grad_accum_steps``, DDP gradient sync on the last one); the
    logged losses are the micro-batch mean. With a ``seed``, torch's random state is seeded from
    ``(seed, iteration, micro-batch, rank)`` before each forward (point sampling, dropout), so a
    resumed run draws what an uninterrupted one would. A non-finite loss on any rank (one all-reduce of a
    flag before each ``backward``) stops every process with ``FloatingPointError`` naming the
    iteration and the likely causes, before the optimizer step and any checkpoint of that
    iteration (the Mask2Former criterion turns non-finite predictions into NaN losses). After
    :meth:`request_stop` the iteration finishes with all its hooks, then training ends as if
    ``max_iter`` were the next iteration (the hooks' ``after_train`` see a completed run).
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
        seed: Optional[int] = None,
    ):
        """
        The values come from ``cfg.train``, whose ranges :class:`~dinov3_m2f.config_schema.TrainSchema`
        checks when the config loads.

        Args:
            model, data_loader, optimizer: as for ``SimpleTrainer``.
            device: device the model runs on (selects the autocast device type).
            amp_dtype: None (fp32), "float16" (with a GradScaler) or "bfloat16".
            clip_grad_max_norm: clip the global L-p gradient norm of all optimized parameters
                to this value; 0 disables clipping. ``clip_grad_norm_type``: the p.
            grad_accum_steps: micro-batches per optimizer step (>= 1).
            eval_modules: modules kept in eval mode (frozen by the config: BatchNorm statistics
                and dropout stay fixed).
            seed: seed torch's random state per iteration (>= 0); None leaves it alone.
        """
        super().__init__(model, data_loader, optimizer)
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
        self.seed = seed
        self.stop_reason: Optional[str] = None
        self.stopped_early = False
        self._batch_iterator: Optional[Iterator] = None

    def _batches(self) -> Iterator:
        """The iterator over ``data_loader``, created on first use (loader workers start then)."""
        if self._batch_iterator is None:
            self._batch_iterator = iter(self.data_loader)
        return self._batch_iterator

    def request_stop(self, reason: str) -> None:
        """End training after the current iteration, logging ``reason`` (on every rank)."""
        self.stop_reason = reason

    def train(self, start_iter: int, max_iter: int) -> None:
        self.stop_reason = None
        self.stopped_early = False  # whether a stop request ended training before max_iter
        try:
            super().train(start_iter, max_iter)
        except _StopTraining:
            pass

    def after_step(self) -> None:
        super().after_step()
        if self.stop_reason is not None and self.iter + 1 < self.max_iter:
            logger.info("Stopping after iteration %d of %d: %s", self.iter, self.max_iter,
                        self.stop_reason)
            # As at a normal end: iter == max_iter tells the hooks' after_train that the run
            # completed.
            self.iter = self.max_iter = self.iter + 1
            self.stopped_early = True
            raise _StopTraining

    def _check_finite(self, losses: torch.Tensor, loss_dict: Dict[str, torch.Tensor]) -> None:
        finite = torch.isfinite(losses.detach()).to(torch.float32).reshape(1)
        if comm.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration {self.iter} (on at least one rank); "
                f"stopping before the optimizer step and without checkpointing. {DIVERGENCE_HINT} "
                f"Losses on this rank: {values}"
            )

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
            data = next(self._batches())
            data_time += time.perf_counter() - start
            if self.seed is not None:  # after the loader, which may draw (e.g. its first batch)
                torch.manual_seed(derive_seed(self.seed, self.iter, micro_step, comm.get_rank()))
            # DDP all-reduces the gradients on the last micro-batch only
            is_last = micro_step == self.grad_accum_steps - 1
            sync = is_last or not isinstance(self.model, DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.model.no_sync():
                amp = self.amp_dtype is not None
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=amp):
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
        self.write_metrics(summed, data_time, self.iter)

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

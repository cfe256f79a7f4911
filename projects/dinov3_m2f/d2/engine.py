"""Training loop pieces: a trainer with AMP (fp16/bf16), global grad clipping and a
distributed non-finite-loss stop, plus device/DDP helpers that also work on CPU (gloo)."""
import logging
import time
from typing import Optional

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """Turn a config device string into a device for this process.

    Args:
        name: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available, else CPU). With CUDA
            each process uses the GPU of its local rank.

    Returns:
        The device.
    """
    if name not in ("cpu", "cuda", "auto"):
        raise ValueError(f"train.device must be 'cpu', 'cuda' or 'auto', got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device='cuda' but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device("cuda", comm.get_local_rank())
    return torch.device("cpu")


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
    """SimpleTrainer with optional autocast, global gradient clipping and a finite-loss check.

    The loss check runs on every rank (one all-reduce of a flag) before ``backward``, so a
    non-finite loss stops all processes together with ``FloatingPointError`` naming the
    iteration, before the optimizer step and before any checkpoint hook of that iteration.
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
        """
        super().__init__(model, data_loader, optimizer)
        if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
            raise ValueError(
                f"amp_dtype must be one of {sorted(AMP_DTYPES)} or None, got {amp_dtype!r}"
            )
        if clip_grad_max_norm < 0:
            raise ValueError(f"clip_grad_max_norm must be >= 0, got {clip_grad_max_norm}")
        self.device = device
        self.amp_dtype = AMP_DTYPES[amp_dtype] if amp_dtype else None
        # Only fp16 needs loss scaling; bf16 has the fp32 exponent range.
        self.grad_scaler = (
            torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        )
        self.clip_grad_max_norm = clip_grad_max_norm
        self.clip_grad_norm_type = clip_grad_norm_type

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

    def run_step(self) -> None:
        """One iteration: forward (autocast), finite check, backward, clip, optimizer step."""
        if not self.model.training:
            raise RuntimeError("SegTrainer: the model was switched to eval mode during training")
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self._check_finite(losses, loss_dict)

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)

        if self.clip_grad_max_norm > 0:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)
            params = [
                p
                for group in self.optimizer.param_groups
                for p in group["params"]
                if p.grad is not None
            ]
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, self.clip_grad_max_norm, norm_type=self.clip_grad_norm_type
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

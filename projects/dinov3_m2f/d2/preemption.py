"""Stopping cleanly when the scheduler asks: a preemption signal (SIGTERM, SIGUSR1, SIGINT by
default; ``train.preemption_signals``) lets every process finish its iteration, the main process
writes a checkpoint as the periodic ones are written, and the process exits with
:data:`PREEMPTED_EXIT_CODE` so that a job script can requeue the job with ``--resume``.

A signal handler only records the signal (nothing else is safe there); :class:`PreemptionHook`
reads the record after every iteration and all processes agree through one all-reduce, so they
stop after the same iteration even when the signal reaches them at different times. A second
signal ends the process at once with ``128 + signal number``, without a checkpoint.
"""
import logging
import os
import signal
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventWriter

logger = logging.getLogger(__name__)

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "PreemptionHook",
    "PreemptionRequest",
    "active_request",
    "install_preemption_handlers",
]

# EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry".
PREEMPTED_EXIT_CODE = 75
# Shells report a process ended by signal N as 128 + N.
SIGNAL_EXIT_BASE = 128


class Preempted(SystemExit):
    """Ends the process with :data:`PREEMPTED_EXIT_CODE` after the preemption checkpoint; a
    ``SystemExit`` is not logged as a training failure and exits quietly with its code."""

    def __init__(self):
        super().__init__(PREEMPTED_EXIT_CODE)


class PreemptionRequest:
    """What this process was asked: the first preemption signal received (0 = none).

    ``shared`` is a value that a launcher process sets to the signal number it received, for the
    worker processes it started; it counts as a first signal.
    """

    def __init__(self, signals: Sequence[int] = (), *, shared=None):
        """
        Args:
            signals: the signal numbers handled.
            shared: a ``multiprocessing.Value("i")`` set by the launcher, or None.
        """
        self.signals = [signal.Signals(s) for s in signals]
        self.shared = shared
        self.received = 0
        self._owner_pid = os.getpid()

    def signal_number(self) -> int:
        """The signal that asked this process to stop (its own or the launcher's); 0 if none."""
        if self.received:
            return self.received
        return self.shared.value if self.shared is not None else 0

    def handle(self, signum: int, frame=None) -> None:
        """The signal handler: record the first signal; exit at once on the second."""
        if os.getpid() != self._owner_pid:
            return  # a forked child (data-loading worker) inherited the handler: its parent decides
        if not self.received:
            self.received = signum
            return
        # Writing to a buffered stream in a signal handler can fail; os.write cannot.
        name = signal.Signals(signum).name
        os.write(2, f"{name} received a second time: exiting at once, without a checkpoint\n".encode())
        os._exit(SIGNAL_EXIT_BASE + signum)


_ACTIVE: Optional[PreemptionRequest] = None


def install_preemption_handlers(signal_names: Sequence[str], *, shared=None) -> PreemptionRequest:
    """Handle the named signals in this process (main thread) as preemption requests.

    Args:
        signal_names: e.g. ``["SIGTERM", "SIGUSR1", "SIGINT"]`` (``train.preemption_signals``).
        shared: see :class:`PreemptionRequest`.

    Returns:
        The request, also returned by :func:`active_request` from now on.
    """
    global _ACTIVE
    request = PreemptionRequest([signal.Signals[name] for name in signal_names], shared=shared)
    for signum in request.signals:
        signal.signal(signum, request.handle)
    _ACTIVE = request
    return request


def active_request() -> PreemptionRequest:
    """The request of :func:`install_preemption_handlers`; one that never stops if none was
    installed (e.g. a trainer built outside ``tools/train_net.py``)."""
    return _ACTIVE if _ACTIVE is not None else PreemptionRequest()


def _agreed_signal(request: PreemptionRequest) -> int:
    """The largest signal number any process received (0: no process was asked to stop)."""
    signum = request.signal_number()
    if comm.get_world_size() == 1:
        return signum
    on_gpu = dist.get_backend() == dist.Backend.NCCL  # NCCL reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    flag = torch.tensor([signum], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


class PreemptionHook(HookBase):
    """After every iteration: if any process was asked to stop, the main process writes
    ``model_<iteration>.pth`` as the periodic checkpointer does (after flushing the metric
    files; ``last_checkpoint`` names it), logs the signal, the iteration and the file, and every
    process raises :class:`Preempted`.

    A request during the last iteration, or at an iteration where early stopping ends the run,
    is only logged: the run ends as usual with its final checkpoint. Register it on every
    process after the evaluation, best-checkpoint and early-stopping hooks and before the
    ``PeriodicWriter``: the writer then prints the stopped iteration once, in ``after_train``.
    """

    def __init__(
        self,
        request: PreemptionRequest,
        *,
        checkpointer=None,
        writers: Sequence[EventWriter] = (),
        file_prefix: str = "model",
    ):
        """
        Args:
            request: this process' preemption request (:func:`active_request`).
            checkpointer: the run's checkpointer on the main process; None elsewhere.
            writers: event writers (``metrics.json``) to flush before the checkpoint.
            file_prefix: the periodic checkpointer's file prefix.
        """
        self._request = request
        self._checkpointer = checkpointer
        self._writers = list(writers)
        self._file_prefix = file_prefix
        self._logged_end = False

    def after_step(self) -> None:
        signum = _agreed_signal(self._request)
        if not signum:
            return
        name = signal.Signals(signum).name
        iteration = self.trainer.iter
        if iteration >= self.trainer.max_iter - 1 or self.trainer.stop_reason is not None:
            if not self._logged_end:
                logger.info("%s received during iteration %d, the last one: finishing the run",
                            name, iteration)
                self._logged_end = True
            return
        if self._checkpointer is not None:
            for writer in self._writers:
                writer.write()
            basename = f"{self._file_prefix}_{iteration:07d}"
            self._checkpointer.save(basename, iteration=iteration)
            logger.warning(
                "Preempted by %s: stopped after iteration %d of %d, checkpoint %s (last_checkpoint "
                "updated); exiting with code %d, continue with --resume", name, iteration,
                self.trainer.max_iter, os.path.join(self._checkpointer.save_dir, f"{basename}.pth"),
                PREEMPTED_EXIT_CODE,
            )
        else:
            logger.info("Preempted by %s: stopped after iteration %d", name, iteration)
        # No process ends before the checkpoint is complete: a launcher that sees one process end
        # terminates the others.
        comm.synchronize()
        raise Preempted()

"""Starting the training processes: one process, ``--num-gpus N`` processes per machine
(``--num-machines``), or the processes that ``torchrun`` or ``srun`` started.

* ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``) and ``srun`` (``SLURM_STEP_NUM_TASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``,
  ``SLURM_STEP_NUM_NODES`` with ``MASTER_ADDR`` and ``MASTER_PORT`` exported by the job script):
  this process joins the process group described by the environment, one device per local rank.
* ``--num-gpus N``: the launcher process starts N workers (detectron2's layout: rank
  ``machine_rank * N + local_rank``). A preemption signal to the launcher asks every worker to
  checkpoint and stop; the launcher exits with the workers' code. Workers die with the launcher
  (``PR_SET_PDEATHSIG``), so none is left holding the rendezvous port.

The start-up rendezvous waits at most ``timeout`` (``--dist-timeout``), logging what it waits for;
the same timeout bounds every collective operation (torch's process-group timeout).
"""
import ctypes
import datetime
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .preemption import (
    PREEMPTED_EXIT_CODE,
    Preempted,
    PreemptionRequest,
    install_preemption_handlers,
)
from .trainer import resolve_device

logger = logging.getLogger(__name__)

# prctl option of <linux/prctl.h>: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1

__all__ = ["DEFAULT_DIST_TIMEOUT_S", "ProcessGroupSetting", "distributed_environment", "free_port", "launch",
           "process_group_backend"]

# detectron2's default: long enough for a slow machine to start and for a long evaluation on
# the main process while the others wait.
DEFAULT_DIST_TIMEOUT_S = 30 * 60
# Once one worker has ended, the time the others get to end by themselves (finish writing a
# checkpoint) before the launcher terminates them.
SHUTDOWN_GRACE_S = 120


@dataclass(frozen=True)
class ProcessGroupSetting:
    """Where this process belongs: ``rank`` of ``world_size``, ``local_rank`` of
    ``local_world_size`` on machine ``machine_rank``; ``dist_url`` is the rendezvous address."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    dist_url: str
    launcher: str

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name)
    if value is None or not value.strip().isdigit():
        raise ValueError(f"environment variable {name} must be a non-negative integer, got {value!r}")
    return int(value)


def _master_address(environ: Mapping[str, str], launcher: str) -> str:
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise ValueError(
            f"started by {launcher} but {' and '.join(missing)} not set: export MASTER_ADDR (the "
            "first node, e.g. $(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)) and "
            "MASTER_PORT (a free port) in the job script"
        )
    return f"tcp://{environ['MASTER_ADDR']}:{environ['MASTER_PORT']}"


def distributed_environment(environ: Mapping[str, str]) -> Optional[ProcessGroupSetting]:
    """The process group that ``torchrun`` or ``srun`` describes in ``environ``; None when
    neither started several processes.

    Raises:
        ValueError: a variable is missing or inconsistent; names it.
    """
    if "TORCHELASTIC_RUN_ID" in environ or "LOCAL_RANK" in environ:
        launcher = "torchrun"
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        rank, world_size, local_rank, local_world_size = (_int_variable(environ, n) for n in names)
    elif int(environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        launcher = "srun"
        names = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_NUM_NODES")
        rank, world_size, local_rank, num_nodes = (_int_variable(environ, n) for n in names)
        if num_nodes < 1 or world_size % num_nodes:
            raise ValueError(
                f"srun: SLURM_STEP_NUM_TASKS={world_size} tasks on SLURM_STEP_NUM_NODES={num_nodes} "
                "nodes; give every node the same number of tasks (--ntasks-per-node)"
            )
        local_world_size = world_size // num_nodes
    else:
        return None
    if world_size <= 1:
        return None
    dist_url = _master_address(environ, launcher)
    if launcher == "torchrun":
        dist_url = "env://"  # the agent of torchrun holds the store at MASTER_ADDR:MASTER_PORT
    if not (rank < world_size and local_rank < local_world_size and world_size % local_world_size == 0
            and rank % local_world_size == local_rank):
        raise ValueError(
            f"{launcher}: rank {rank} of {world_size} with local rank {local_rank} of "
            f"{local_world_size} is not rank = machine * processes per machine + local rank; "
            "start the same number of processes on every machine, numbered machine by machine"
        )
    return ProcessGroupSetting(rank, world_size, local_rank, local_world_size, dist_url, launcher)


def process_group_backend(device: str) -> str:
    """``"nccl"`` for a CUDA ``train.device``, ``"gloo"`` for the CPU."""
    return "gloo" if resolve_device(device).type == "cpu" else "nccl"


def _describe(url: str) -> str:
    if url == "env://":
        return f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} (env://)"
    return url


def _join_process_group(setting: ProcessGroupSetting, *, backend: str, timeout_s: float) -> None:
    """``init_process_group`` with a bounded, logged wait; detectron2's local process group."""
    setup_logger(name=__name__, distributed_rank=setting.local_rank, abbrev_name="launch")
    if backend == "nccl" and setting.local_world_size > torch.cuda.device_count():
        raise RuntimeError(
            f"{setting.local_world_size} processes on this machine but {torch.cuda.device_count()} "
            f"GPUs visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}); give "
            "every process of a machine all its GPUs"
        )
    where = _describe(setting.dist_url)
    logger.info(
        "Waiting up to %d s for %d processes on %d machine(s) at %s (this is machine %d, %s)",
        timeout_s, setting.world_size, setting.num_machines, where, setting.machine_rank,
        setting.launcher,
    )
    try:
        dist.init_process_group(
            backend=backend, init_method=setting.dist_url, world_size=setting.world_size,
            rank=setting.rank, timeout=datetime.timedelta(seconds=timeout_s),
        )
    except RuntimeError as error:  # torch's store and rendezvous errors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(
            f"Distributed start-up failed at {where}: the {setting.world_size} processes "
            f"({setting.num_machines} machines x {setting.local_world_size}) did not all join within "
            f"{timeout_s:g} s, or the address cannot be reached ({first_line}). This is rank "
            f"{setting.rank} on machine {setting.machine_rank}. Start every machine with the same "
            "--num-machines, --num-gpus and --dist-url and its own --machine-rank, or raise "
            "--dist-timeout"
        ) from error
    comm.create_local_process_group(setting.local_world_size)
    if backend == "nccl":
        torch.cuda.set_device(setting.local_rank)
    comm.synchronize()
    logger.info("All %d processes joined", setting.world_size)


def free_port() -> int:
    """A TCP port of this machine that no process listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux; elsewhere workers
    rely on the launcher's own clean-up)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")


def _run_then_leave_group(main_func: Callable, args: tuple) -> None:
    """Run ``main_func(*args)``; then every process waits for the others and leaves the process
    group. A process that exits while another still uses the group can abort in the backend's
    threads ("terminate called without an active exception")."""
    main_func(*args)
    if dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


def _spawned_worker(local_rank: int, main_func: Callable, args: tuple, machine_rank: int,
                    local_world_size: int, world_size: int, dist_url: str, backend: str,
                    timeout_s: float, signal_names: Sequence[str], shared, launcher_pid: int) -> None:
    """A worker started by :func:`launch`: dies with the launcher, handles preemption signals
    (and the launcher's request in ``shared``), joins the group, runs ``main_func``."""
    _die_with_parent()
    if os.getppid() != launcher_pid:
        os._exit(1)  # the launcher ended before the death signal was set
    install_preemption_handlers(signal_names, shared=shared)
    rank = machine_rank * local_world_size + local_rank
    setting = ProcessGroupSetting(rank, world_size, local_rank, local_world_size, dist_url, "launch")
    _join_process_group(setting, backend=backend, timeout_s=timeout_s)
    _run_then_leave_group(main_func, args)


class _LauncherRequest(PreemptionRequest):
    """The launcher's signal handler: the first signal is passed to the workers through
    ``shared``; a second one ends the launcher at once (its workers die with it)."""

    def handle(self, signum: int, frame=None) -> None:
        first = not self.received
        super().handle(signum, frame)  # exits on the second signal
        if first:
            self.shared.value = signum
            os.write(2, f"{signal.Signals(signum).name}: asked the training processes to save a "
                        "checkpoint after their current iteration and stop\n".encode())


def _spawn(main_func: Callable, args: tuple, *, num_processes: int, num_machines: int,
           machine_rank: int, dist_url: str, backend: str, timeout_s: float,
           signal_names: Sequence[str]) -> None:
    shared = mp.get_context("spawn").Value("i", 0)
    request = _LauncherRequest([signal.Signals[n] for n in signal_names], shared=shared)
    for signum in request.signals:
        signal.signal(signum, request.handle)
    context = mp.start_processes(
        _spawned_worker,
        args=(main_func, args, machine_rank, num_processes, num_machines * num_processes,
              dist_url, backend, timeout_s, list(signal_names), shared, os.getpid()),
        nprocs=num_processes, join=False, daemon=False, start_method="spawn",
    )
    try:
        while not context.join(grace_period=SHUTDOWN_GRACE_S):
            pass
    except mp.ProcessExitedException:
        if all(p.exitcode == PREEMPTED_EXIT_CODE for p in context.processes):
            raise Preempted() from None
        raise


def launch(main_func: Callable, args: tuple = (), *, num_processes: int = 1, num_machines: int = 1,
           machine_rank: int = 0, dist_url: str = "auto",
           timeout_s: float = DEFAULT_DIST_TIMEOUT_S, backend: str = "gloo",
           preemption_signals: Sequence[str] = (),
           environ: Optional[Mapping[str, str]] = None) -> None:
    """Run ``main_func(*args)`` in every training process (see the module docstring).

    Args:
        main_func, args: what every process runs.
        num_processes: processes to start on this machine (``--num-gpus``); 1 when started by
            ``torchrun`` or ``srun`` (or ``srun`` with one task per machine and
            ``num_machines`` tasks: the ``--num-gpus`` layout).
        num_machines, machine_rank, dist_url: as for detectron2's ``launch`` (``"auto"``: a free
            port on localhost, one machine only).
        timeout_s: the longest wait of the start-up rendezvous and of any collective.
        backend: ``"nccl"`` or ``"gloo"`` (:func:`process_group_backend`).
        preemption_signals: signal names handled as preemption requests (``train.preemption_signals``).
        environ: the environment to read ``torchrun`` / ``srun`` variables from (``os.environ``).

    Raises:
        Preempted: (a ``SystemExit``) the workers stopped after a preemption signal.
        ValueError: launcher variables together with ``--num-gpus`` / ``--num-machines``, or a
            timeout that is not positive.
    """
    if not timeout_s > 0:
        raise ValueError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    setting = distributed_environment(os.environ if environ is None else environ)
    given = num_processes != 1 or num_machines != 1
    if setting is not None and given and setting.launcher == "srun" and num_machines == setting.world_size:
        setting = None  # one srun task per machine, each starting --num-gpus processes
    if setting is not None:
        if given:
            raise ValueError(
                f"started by {setting.launcher} ({setting.world_size} processes) and given "
                f"--num-gpus {num_processes} --num-machines {num_machines}: {setting.launcher} "
                "already started the processes; leave both at 1 (with srun, --num-gpus needs "
                "one task per machine and --num-machines equal to the number of tasks)"
            )
        install_preemption_handlers(preemption_signals)
        _join_process_group(setting, backend=backend, timeout_s=timeout_s)
        _run_then_leave_group(main_func, args)
        return
    if num_processes * num_machines == 1:
        install_preemption_handlers(preemption_signals)
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://<host>:<port>")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    _spawn(main_func, args, num_processes=num_processes, num_machines=num_machines,
           machine_rank=machine_rank, dist_url=dist_url, backend=backend, timeout_s=timeout_s,
           signal_names=preemption_signals)

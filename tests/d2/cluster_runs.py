"""Running ``tools/train_net.py`` as real processes for the cluster tests: the tiny synthetic
config for a few iterations, each process in its own session with its output in a log file, a
signal once an iteration is logged, and every process killed at the end whatever happened."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from helpers import REPO

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
# Each wait of a test is bounded by this (a run takes ~20 s on 2 free CPU cores).
PROCESS_TIMEOUT_S = 300
MAX_ITER = 8
# No periodic checkpoint and no periodic evaluation: the only mid-run checkpoint is the one a
# signal asks for; a metrics.json entry per iteration tells when to send the signal.
OVERRIDES = [
    f"train.max_iter={MAX_ITER}", "train.checkpointer.period=100", "train.eval_period=0",
    "train.log_period=1", "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0", "model.criterion.num_points=256",
]
PREEMPTED_EXIT_CODE = 75
WEIGHTS_ATOL = 1e-6


def train_command(output_dir, *extra, program=(sys.executable, TRAIN_NET)):
    """``train_net.py`` (or ``program``, e.g. torchrun + train_net.py) with the test overrides;
    ``extra`` flags and overrides come last (they win)."""
    flags = [e for e in extra if e.startswith("-") or "=" not in e]
    overrides = [e for e in extra if e not in flags]
    return [*program, "--config-file", CONFIG, *flags, f"train.output_dir={output_dir}",
            *OVERRIDES, *overrides]


class Runs:
    """Processes started by a test; :meth:`kill_all` (in a ``finally``) SIGKILLs every one left
    with its session (workers included)."""

    def __init__(self, env, log_dir):
        self.env = env
        self.log_dir = str(log_dir)
        self.procs = []

    def start(self, command, name):
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, f"{name}.log"), "w") as log:
            proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        proc.name = name
        self.procs.append(proc)
        return proc

    def log(self, proc) -> str:
        with open(os.path.join(self.log_dir, f"{proc.name}.log")) as f:
            return f.read()

    def wait(self, *procs, timeout_s=PROCESS_TIMEOUT_S):
        """The exit codes of ``procs``; fails naming the one still running after the timeout."""
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{proc.name} still running after {timeout_s} s:\n"
                                     f"{self.log(proc)[-3000:]}") from None
        return [proc.returncode for proc in procs]

    def run(self, command, name):
        """Start ``command``, wait; fails with its log unless it exits 0."""
        proc = self.start(command, name)
        code, = self.wait(proc)
        assert code == 0, f"{name} exited with {code}:\n{self.log(proc)[-4000:]}"
        return proc

    def kill_all(self):
        for proc in self.procs:
            try:  # also when the process itself has ended: its workers may not have
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def logged_iterations(output_dir):
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def signal_after_iteration(runs, proc, output_dir, iteration, signum, *, to=None):
    """Send ``signum`` to ``to`` (default ``proc``) once ``metrics.json`` logs ``iteration``."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not any(e["iteration"] >= iteration for e in logged_iterations(output_dir)):
        assert proc.poll() is None, f"{proc.name} ended before iteration {iteration}:\n" + runs.log(proc)[-3000:]
        assert time.monotonic() < deadline, f"iteration {iteration} not logged in {PROCESS_TIMEOUT_S} s"
        time.sleep(0.05)
    os.kill((to or proc).pid, signum)


def preempted_checkpoint(output_dir):
    """The file ``last_checkpoint`` names after a preemption, and its iteration."""
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        name = f.read().strip()
    assert name.startswith("model_0") and name != "model_final.pth", name
    return name, int(name[len("model_"):-len(".pth")])


def assert_same_final_weights(expected_dir, actual_dir):
    """``model_final.pth`` of both runs agree within :data:`WEIGHTS_ATOL` (max-abs)."""
    expected, actual = (torch.load(os.path.join(d, "model_final.pth"), weights_only=True)["model"]
                        for d in (expected_dir, actual_dir))
    assert expected.keys() == actual.keys()
    diffs = {k: (v.double() - actual[k].double()).abs().max().item() for k, v in expected.items()}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= WEIGHTS_ATOL, f"{worst}: max-abs difference {diffs[worst]}"

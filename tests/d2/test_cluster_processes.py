"""Two CPU processes (gloo) started three ways: ``--num-gpus 2``, ``torchrun --nproc_per_node 2``
and two localhost "machines" of one process each. A signal to the launcher, or to one machine,
stops both processes after the same iteration with a checkpoint; ``--resume`` ends with the
weights of the uninterrupted two-process run; ``torchrun`` trains that same run."""
import os
import signal
import sys

import pytest

pytest.importorskip("detectron2")

from cluster_runs import (  # noqa: E402
    MAX_ITER,
    PREEMPTED_EXIT_CODE,
    TRAIN_NET,
    Runs,
    assert_same_final_weights,
    logged_iterations,
    preempted_checkpoint,
    signal_after_iteration,
    train_command,
)

from dinov3_m2f.d2.launch import free_port  # noqa: E402

TWO_PROCESSES = ("--num-gpus", "2", "--dist-url", "auto")
LOSS_RTOL = 1e-6


@pytest.fixture(scope="module")
def two_process_run(synthetic_env, tmp_path_factory):
    """The output folder of an uninterrupted ``--num-gpus 2`` CPU run."""
    out = tmp_path_factory.mktemp("two_processes")
    runs = Runs(synthetic_env, out / "logs")
    try:
        runs.run(train_command(str(out / "run"), *TWO_PROCESSES), "uninterrupted")
    finally:
        runs.kill_all()
    return str(out / "run")


def _machine_command(output_dir, machine_rank, port, *extra):
    return train_command(output_dir, "--num-machines", "2", "--machine-rank", str(machine_rank),
                         "--dist-url", f"tcp://127.0.0.1:{port}", *extra)


def test_sigterm_to_the_launcher_checkpoints_both_processes_and_resume_matches(
        synthetic_env, tmp_path, two_process_run):
    runs = Runs(synthetic_env, tmp_path / "logs")
    cut = str(tmp_path / "cut")
    try:
        launcher = runs.start(train_command(cut, *TWO_PROCESSES), "cut")
        signal_after_iteration(runs, launcher, cut, 1, signal.SIGTERM)
        assert runs.wait(launcher) == [PREEMPTED_EXIT_CODE], runs.log(launcher)[-3000:]
        name, iteration = preempted_checkpoint(cut)
        log = runs.log(launcher)
        assert "SIGTERM: asked the training processes to save a checkpoint" in log
        assert f"Preempted by SIGTERM: stopped after iteration {iteration} of {MAX_ITER}" in log
        with open(os.path.join(cut, "log.txt.rank1")) as f:  # the other process stopped there too
            assert f"Preempted by SIGTERM: stopped after iteration {iteration}\n" in f.read()
        runs.run(train_command(cut, *TWO_PROCESSES, "--resume"), "resumed")
    finally:
        runs.kill_all()
    assert_same_final_weights(two_process_run, cut)


def test_torchrun_gives_the_losses_of_num_gpus_2(synthetic_env, tmp_path, two_process_run):
    runs = Runs(synthetic_env, tmp_path / "logs")
    out = str(tmp_path / "torchrun")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port()), TRAIN_NET)
    try:
        proc = runs.run(train_command(out, program=torchrun), "torchrun")
    finally:
        runs.kill_all()
    assert "Waiting up to 1800 s for 2 processes on 1 machine(s)" in runs.log(proc)
    expected, actual = logged_iterations(two_process_run), logged_iterations(out)
    # one run, not two: every iteration (and the final evaluation) logged once
    assert [e["iteration"] for e in actual] == [e["iteration"] for e in expected] == list(
        range(MAX_ITER + 1))
    for want, got in zip(expected[:MAX_ITER], actual):
        losses = [k for k in want if k.startswith("loss_") or k == "total_loss"]
        assert losses and all(abs(got[k] - want[k]) <= LOSS_RTOL * abs(want[k]) for k in losses), (
            want["iteration"], {k: (want[k], got[k]) for k in losses})
    assert_same_final_weights(two_process_run, out)


def test_two_machines_train_are_signalled_and_resume(synthetic_env, tmp_path, two_process_run):
    runs = Runs(synthetic_env, tmp_path / "logs")
    out = str(tmp_path / "machines")
    try:
        port = free_port()
        machines = [runs.start(_machine_command(out, rank, port), f"machine{rank}") for rank in (0, 1)]
        # only machine 1 gets the signal; machine 0 learns it in the all-reduce of the iteration
        signal_after_iteration(runs, machines[0], out, 1, signal.SIGUSR1, to=machines[1])
        assert runs.wait(*machines) == [PREEMPTED_EXIT_CODE] * 2, runs.log(machines[0])[-3000:]
        name, iteration = preempted_checkpoint(out)
        assert f"Preempted by SIGUSR1: stopped after iteration {iteration} of {MAX_ITER}" in runs.log(
            machines[0])
        assert "for 2 processes on 2 machine(s) at tcp://127.0.0.1" in runs.log(machines[1])
        port = free_port()
        resumed = [runs.start(_machine_command(out, rank, port, "--resume"), f"resumed{rank}")
                   for rank in (0, 1)]
        assert runs.wait(*resumed) == [0, 0], runs.log(resumed[0])[-3000:]
        assert f"Starting training from iteration {iteration + 1}" in runs.log(resumed[0])
    finally:
        runs.kill_all()
    assert_same_final_weights(two_process_run, out)

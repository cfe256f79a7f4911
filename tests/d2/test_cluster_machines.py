"""Starting processes on several machines: the rendezvous waits a bounded, logged time for a
missing machine; machines given different configs are refused naming the keys; workers die with
their launcher; ``torchrun`` and ``srun`` variables describe the process group."""
import os
import signal
import socket
import time

import pytest

pytest.importorskip("detectron2")

from cluster_runs import PROCESS_TIMEOUT_S, Runs, train_command  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from dinov3_m2f.d2.config_agreement import differing_keys, flatten_config  # noqa: E402
from dinov3_m2f.d2.launch import ProcessGroupSetting, distributed_environment, free_port, launch  # noqa: E402

SHORT_TIMEOUT_S = 10
EXIT_WAIT_S = 30


def _machine(output_dir, machine_rank, port, *extra):
    return train_command(output_dir, "--num-machines", "2", "--machine-rank", str(machine_rank),
                         "--dist-url", f"tcp://127.0.0.1:{port}", *extra)


def test_a_missing_machine_fails_within_the_timeout_saying_what_it_waited_for(synthetic_env, tmp_path):
    runs = Runs(synthetic_env, tmp_path / "logs")
    port = free_port()
    try:
        proc = runs.start(_machine(str(tmp_path / "out"), 0, port, "--dist-timeout",
                                   str(SHORT_TIMEOUT_S)), "machine0")
        code, = runs.wait(proc)
    finally:
        runs.kill_all()
    log = runs.log(proc)
    assert code != 0
    assert (f"Waiting up to {SHORT_TIMEOUT_S} s for 2 processes on 2 machine(s) at "
            f"tcp://127.0.0.1:{port} (this is machine 0") in log
    assert (f"Distributed start-up failed at tcp://127.0.0.1:{port}: the 2 processes (2 machines x "
            f"1) did not all join within {SHORT_TIMEOUT_S} s") in log


def test_machines_with_another_max_iter_are_refused_naming_the_key(synthetic_env, tmp_path):
    runs = Runs(synthetic_env, tmp_path / "logs")
    out, port = str(tmp_path / "out"), free_port()
    try:
        machines = [runs.start(_machine(out, 0, port), "machine0"),
                    runs.start(_machine(out, 1, port, "train.max_iter=6"), "machine1")]
        codes = runs.wait(*machines)
    finally:
        runs.kill_all()
    assert all(code != 0 for code in codes), codes
    for proc in machines:
        assert ("The processes of this run were given different configs; differing keys: "
                "train.max_iter (rank 0: 8, rank 1: 6)") in runs.log(proc)
    assert not os.path.exists(os.path.join(out, "metrics.json"))  # refused before training


def _children(pid):
    """Pids of the live (not zombie) child processes of ``pid`` that run a spawned worker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_die_with_a_killed_launcher_and_free_the_port(synthetic_env, tmp_path):
    """The worker waits for a missing machine inside the rendezvous (C++, where a Python signal
    handler never runs) when its launcher is killed: it must end at once, freeing the port."""
    runs = Runs(synthetic_env, tmp_path / "logs")
    port = free_port()
    try:
        launcher = runs.start(_machine(str(tmp_path / "out"), 0, port), "launcher")
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while "Waiting up to" not in runs.log(launcher):
            assert launcher.poll() is None and time.monotonic() < deadline, runs.log(launcher)[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)  # into init_process_group, which waits for machine 1
        workers = _children(launcher.pid)
        assert len(workers) == 1, workers
        os.kill(launcher.pid, signal.SIGKILL)
        deadline = time.monotonic() + EXIT_WAIT_S
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in workers if _alive(pid)]
    finally:
        runs.kill_all()
    assert survivors == [], f"workers {survivors} outlived their launcher"
    assert _port_frees_up(port), f"the rendezvous port {port} is still taken"


def _port_frees_up(port: int) -> bool:
    """Whether ``port`` can be listened on within EXIT_WAIT_S (the kernel closes a killed
    process's sockets once it is reaped, which can lag behind the kill on a busy machine)."""
    deadline = time.monotonic() + EXIT_WAIT_S
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past closed connections
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
        time.sleep(0.2)


# ---------------------------------------------------------------- launcher variables


def test_torchrun_and_srun_variables_describe_the_process_group():
    master = {"MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    torchrun = {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                "LOCAL_WORLD_SIZE": "2", **master}
    assert distributed_environment(torchrun) == ProcessGroupSetting(3, 4, 1, 2, "env://", "torchrun")
    srun = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
            "SLURM_STEP_NUM_NODES": "2", **master}
    setting = distributed_environment(srun)
    assert setting == ProcessGroupSetting(2, 4, 0, 2, "tcp://node1:29500", "srun")
    assert (setting.machine_rank, setting.num_machines) == (1, 2)
    # one process: nothing to join (a batch script's own variables, torchrun with one process)
    assert distributed_environment({}) is None
    assert distributed_environment({**srun, "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert distributed_environment({**torchrun, "WORLD_SIZE": "1", "RANK": "0"}) is None


def test_launcher_variables_that_cannot_work_are_named():
    srun = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
            "SLURM_STEP_NUM_NODES": "2"}
    with pytest.raises(ValueError, match="started by srun but MASTER_ADDR and MASTER_PORT not set"):
        distributed_environment(srun)
    master = {"MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    with pytest.raises(ValueError, match="rank 1 of 4 with local rank 0 of 2 is not rank = machine"):
        distributed_environment({**srun, **master, "SLURM_LOCALID": "0"})  # cyclic task layout
    with pytest.raises(ValueError, match="SLURM_STEP_NUM_TASKS=4 tasks on SLURM_STEP_NUM_NODES=3"):
        distributed_environment({**srun, **master, "SLURM_STEP_NUM_NODES": "3"})
    with pytest.raises(ValueError, match="environment variable LOCAL_WORLD_SIZE must be"):
        distributed_environment({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", **master})
    torchrun = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", **master}
    with pytest.raises(ValueError, match="started by torchrun .* --num-gpus 2 .* leave both at 1"):
        launch(print, num_processes=2, environ=torchrun)
    with pytest.raises(ValueError, match="started by srun .* --num-gpus 2 --num-machines 3"):
        launch(print, num_processes=2, num_machines=3, environ={**srun, **master})
    with pytest.raises(ValueError, match="--dist-timeout must be > 0 seconds, got 0"):
        launch(print, timeout_s=0, environ={})


def test_config_fingerprints_name_the_differing_keys():
    cfg = OmegaConf.create({"train": {"max_iter": 8, "freeze": ["a"]}, "model": {"_target_": "m.M"}})
    flat = flatten_config(cfg)
    assert flat == {"train.max_iter": "8", "train.freeze": "['a']", "model._target_": "'m.M'"}
    other = dict(flat, **{"train.max_iter": "6"})
    del other["train.freeze"]
    assert differing_keys([flat, flat]) == []
    assert differing_keys([flat, other]) == ["train.freeze", "train.max_iter"]

"""Fixture and tool loading shared by the test modules (imported as ``helpers``; pytest puts tests/ on sys.path)."""
import importlib.util
import os
from pathlib import Path

import torch

REPO = str(Path(__file__).resolve().parent.parent)
FIXTURES = os.path.join(REPO, "tests", "fixtures")
TOOLS = Path(REPO) / "tools"
DEV = Path(REPO) / "dev"
# Tolerance of the ViT outputs in tests/fixtures/README.md (>= 15x the measured fp32 noise).
PARITY_ATOL = 1e-4


def load_vit_fixture(name):
    """The official DINOv3 ViT reference ``tests/fixtures/dinov3_vit_<name>.pt`` (config, state_dict, outputs)."""
    return torch.load(os.path.join(FIXTURES, f"dinov3_vit_{name}.pt"), weights_only=True)


def load_tool(name, *, folder=TOOLS):
    """Import ``<folder>/<name>.py`` (default: ``tools/``) as a module (scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_init_checkpoint(model, path, *, partial):
    """Load ``train.init_checkpoint=path`` into ``model`` as tools/train_net.py does before iteration
    0 (no ``--resume``), with ``train.init_partial=partial``; returns the start iteration."""
    import argparse

    from omegaconf import OmegaConf

    from dinov3_m2f.d2.checkpoint import TrainableCheckpointer
    from dinov3_m2f.training import frozen_state_prefixes

    cfg = OmegaConf.create({"train": {"output_dir": os.path.dirname(path), "init_checkpoint": path,
                                      "init_partial": partial}})
    checkpointer = TrainableCheckpointer(model, exclude_prefixes=frozen_state_prefixes(model))
    return load_tool("train_net").load_start_state(argparse.Namespace(resume=False), cfg, checkpointer)


class CreatesFileWhenUnpickled:
    """A pickle payload that runs code: unpickling it calls ``open(marker, "w")``, creating ``marker``.

    Used to check that checkpoint readers never unpickle arbitrary objects (the marker must not appear).
    """

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_code_executing_checkpoint(path, marker, *, plain_pickle=False):
    """Write a checkpoint at ``path`` whose loading with full unpickling would create ``marker``.

    The file also holds a real-looking state dict. ``plain_pickle=True`` writes it with ``pickle.dump``
    (a ``.pkl`` file) instead of ``torch.save``.
    """
    import pickle

    data = {"model": {"weight": torch.zeros(2, 2)}, "payload": CreatesFileWhenUnpickled(marker)}
    if plain_pickle:
        with open(path, "wb") as f:
            pickle.dump(data, f)
    else:
        torch.save(data, path)
    return str(path)


def write_hf_directory(directory, state_dict, *, config=None, num_shards=1):
    """Write a Hugging Face model directory for an official-format DINOv3 ``state_dict``.

    Keys use the transformers-5 module naming (``model.layer.i``). With ``num_shards > 1`` the
    tensors are split round-robin over that many shards plus ``model.safetensors.index.json``;
    ``config`` (a dict) is written as ``config.json`` when given. Returns the directory.
    """
    import json

    from safetensors.torch import save_file

    from dinov3_m2f.weights import convert_to_hf_state_dict

    os.makedirs(directory, exist_ok=True)
    hf_sd = convert_to_hf_state_dict(state_dict, layer_prefix="model.layer.")
    if config is not None:
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f)
    if num_shards == 1:
        save_file(hf_sd, os.path.join(directory, "model.safetensors"))
        return directory
    keys = sorted(hf_sd)
    weight_map = {}
    for index in range(num_shards):
        shard = f"model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        shard_keys = keys[index::num_shards]
        save_file({k: hf_sd[k] for k in shard_keys}, os.path.join(directory, shard))
        weight_map.update({k: shard for k in shard_keys})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return directory


def kill_when_file_appears(command, *, env, path, timeout_s):
    """Start ``command`` in a new session and SIGKILL it (with its children, e.g. data-loading
    workers) as soon as ``path`` exists; fails if it exits or times out before that."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout_s
    try:
        while not os.path.exists(path):
            assert proc.poll() is None, f"{command[1]} exited before writing {path}"
            assert time.time() < deadline, f"{path} not written in {timeout_s} s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

"""Fixture and tool loading shared by the test modules (imported as ``helpers``; pytest puts tests/ on sys.path)."""
import importlib.util
import os
from pathlib import Path

import torch

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOOLS = Path(__file__).parent.parent / "tools"
# Tolerance of the ViT outputs in tests/fixtures/README.md (>= 15x the measured fp32 noise).
PARITY_ATOL = 1e-4


def load_vit_fixture(name):
    """The official DINOv3 ViT reference ``tests/fixtures/dinov3_vit_<name>.pt`` (config, state_dict, outputs)."""
    return torch.load(os.path.join(FIXTURES, f"dinov3_vit_{name}.pt"), weights_only=True)


def load_tool(name):
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

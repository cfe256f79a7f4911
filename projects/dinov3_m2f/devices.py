"""Device names, as ``train.device``, the tools' ``--device`` and the benchmarks take them:
``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"`` (no detectron2)."""
import re

import torch

__all__ = ["DEVICE_PATTERN", "check_device_name", "parse_device"]

# Device names besides "auto".
DEVICE_PATTERN = r"cpu|cuda(:\d+)?"
AUTO = "auto"


def check_device_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a device name this project accepts."""
    if not isinstance(name, str) or (name != AUTO and not re.fullmatch(DEVICE_PATTERN, name)):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {name!r}")


def parse_device(name: str = AUTO, *, local_rank: int = 0) -> torch.device:
    """The device a name stands for on this machine.

    Args:
        name: ``"auto"`` (``"cuda"`` when CUDA is available, else ``"cpu"``), ``"cpu"``,
            ``"cuda"`` (the GPU ``local_rank``) or ``"cuda:<i>"``.
        local_rank: the GPU of ``"cuda"``: this process' rank on its machine.

    Raises:
        ValueError: not a device name of the list above.
        RuntimeError: a CUDA device was asked for and CUDA is not available.
    """
    check_device_name(name)
    if name == AUTO:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device if device.index is not None else torch.device("cuda", local_rank)

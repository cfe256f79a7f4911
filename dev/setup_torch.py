"""The torch decisions of ``dev/setup_env.sh``, run in the interpreter being set up.

``decide`` says what to do with torch/torchvision: keep an installed pair that is in the
supported range and whose compiled ops load; install the pinned pair only when torch is missing
(or is a CPU build that cannot be used); never replace a GPU (CUDA/ROCm) build of torch.
``pins`` writes pip constraints that hold the installed torch/torchvision in place while the
other packages install. ``cuda-build`` says whether to compile the op's CUDA kernels.

What each command prints for the shell:

    python dev/setup_torch.py decide       ->  three lines: ACTION, REQUIREMENTS, MESSAGE
    python dev/setup_torch.py pins         ->  torch==X and torchvision==Y, one per line
    python dev/setup_torch.py cuda-build   ->  one line: 0|1 REASON

ACTION is ``keep``, ``install`` (pip-install REQUIREMENTS, then decide again) or ``refuse``
(print MESSAGE and stop). This file runs before torch may exist: it imports torch only inside
functions and nothing from dinov3_m2f.
"""
import argparse
import importlib.metadata
import importlib.util
import os
import re
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Tuple

# Supported torch releases: [floor, ceiling) as (major, minor). The floor (2.11, the GPU image's
# torch) and the pinned pair below are the versions the whole suite was run with.
SUPPORTED_TORCH = ((2, 11), (2, 15))
PINNED_PAIR = ["torch==2.14.1", "torchvision==0.29.1"]
SUPPORTED_TEXT = "torch >={}.{},<{}.{}".format(*SUPPORTED_TORCH[0], *SUPPORTED_TORCH[1])
# What a broken torch / torchvision raises on import or when its compiled ops are missing.
LOAD_ERRORS = (ImportError, OSError, RuntimeError, AttributeError)
_NVCC_RELEASE = re.compile(r"release (\d+\.\d+)")
_ANOTHER_INTERPRETER = "or set PYTHON= to another interpreter or a fresh venv"


@dataclass(frozen=True)
class TorchState:
    """What is installed in this interpreter.

    Args:
        torch: ``torch.__version__``; None when torch is not installed.
        torch_error: why ``import torch`` failed; None when it imports.
        gpu_build: ``"CUDA 13.0"`` / ``"ROCm 6.4"`` for a GPU build of torch, None for a CPU build.
        torchvision: ``torchvision.__version__``; None when it is not installed.
        torchvision_error: why torchvision does not import or its compiled ops do not run.
    """

    torch: Optional[str] = None
    torch_error: Optional[str] = None
    gpu_build: Optional[str] = None
    torchvision: Optional[str] = None
    torchvision_error: Optional[str] = None


def _major_minor(version: str) -> Tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"cannot read a major.minor version from {version!r}")
    return int(match.group(1)), int(match.group(2))


def probe() -> TorchState:
    """Returns:
    TorchState: torch and torchvision as this interpreter sees them; torchvision's compiled ops
    are exercised with one ``torchvision.ops.nms`` call.
    """
    if importlib.util.find_spec("torch") is None:
        return TorchState()
    try:
        import torch
    except LOAD_ERRORS as exc:
        return TorchState(torch=importlib.metadata.version("torch"), torch_error=repr(exc))
    if torch.version.cuda is not None:
        gpu_build = f"CUDA {torch.version.cuda}"
    elif getattr(torch.version, "hip", None) is not None:
        gpu_build = f"ROCm {torch.version.hip}"
    else:
        gpu_build = None
    state = dict(torch=torch.__version__, gpu_build=gpu_build)
    if importlib.util.find_spec("torchvision") is None:
        return TorchState(**state)
    try:
        import torchvision

        state["torchvision"] = torchvision.__version__
        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except LOAD_ERRORS as exc:
        state.setdefault("torchvision", importlib.metadata.version("torchvision"))
        state["torchvision_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return TorchState(**state)


def decide(state: TorchState) -> Tuple[str, List[str], str]:
    """What set-up does with the torch/torchvision described by ``state``.

    Args:
        state: the installed torch/torchvision (:func:`probe`).

    Returns:
        (action, requirements, message): action ``keep``, ``install`` (pip-install
        ``requirements`` with the installed torch held by :func:`pins`) or ``refuse``; the
        message says why, with the versions found.
    """
    if state.torch is None:
        return "install", PINNED_PAIR, f"torch is not installed: installing {' + '.join(PINNED_PAIR)}"
    if state.torch_error is not None:
        return "refuse", [], (
            f"torch {state.torch} is installed but does not import ({state.torch_error}); "
            f"repair or uninstall it, {_ANOTHER_INTERPRETER}"
        )
    found = f"torch {state.torch} ({state.gpu_build or 'CPU build'})"
    low, high = SUPPORTED_TORCH
    if not low <= _major_minor(state.torch) < high:
        return _cannot_use(state, f"{found} is outside the supported range {SUPPORTED_TEXT}")
    if state.torchvision is None:
        return "install", ["torchvision"], (
            f"{found} kept; torchvision is not installed: installing the release made for it"
        )
    if state.torchvision_error is not None:
        return _cannot_use(state, (
            f"{found} is supported but torchvision {state.torchvision} does not work with it "
            f"({state.torchvision_error})"
        ))
    return "keep", [], (
        f"{found} + torchvision {state.torchvision} kept: supported, torchvision's compiled ops load"
    )


def _cannot_use(state: TorchState, problem: str) -> Tuple[str, List[str], str]:
    """A CPU build of torch that cannot be used is replaced by the pinned pair; a GPU build never is."""
    if state.gpu_build is None:
        return "install", PINNED_PAIR, f"{problem}: replacing it with {' + '.join(PINNED_PAIR)}"
    return "refuse", [], (
        f"{problem}. Set-up never replaces a GPU build of torch: install a supported "
        f"torch/torchvision pair built for your CUDA (or uninstall both to get "
        f"{' + '.join(PINNED_PAIR)}), {_ANOTHER_INTERPRETER}"
    )


def pins() -> List[str]:
    """Returns:
    List[str]: ``name==version`` of the installed torch and torchvision (as pip sees them), to be
    passed to pip as constraints so that no later install replaces them.
    """
    found = []
    for name in ("torch", "torchvision"):
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def nvcc_release(cuda_home: Optional[str]) -> Optional[str]:
    """Args:
        cuda_home: CUDA toolkit root, or None when there is none.

    Returns:
        Optional[str]: ``"13.0"`` from ``<cuda_home>/bin/nvcc --version``; None without nvcc.
    """
    if cuda_home is None:
        return None
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.access(nvcc, os.X_OK):
        return None
    output = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    match = _NVCC_RELEASE.search(output)
    return match.group(1) if match else None


def cuda_build(
    *, force_cuda: Optional[str], torch_cuda: Optional[str], nvcc: Optional[str],
    cuda_home: Optional[str]
) -> Tuple[bool, str]:
    """Whether to compile the op's CUDA kernels (the ``FORCE_CUDA`` given to ``setup.py``).

    Args:
        force_cuda: the user's ``FORCE_CUDA`` (``"0"``/``"1"`` decide), or None to decide here.
        torch_cuda: ``torch.version.cuda``; None for a CPU (or ROCm) build of torch.
        nvcc: the release of ``<cuda_home>/bin/nvcc``; None when there is none.
        cuda_home: the CUDA toolkit root torch builds with, for the message.

    Returns:
        (build, reason): compile the kernels only when torch is a CUDA build and nvcc has the same
        major version (torch refuses to compile with another one); the reason is for the log line.
    """
    if force_cuda in ("0", "1"):
        return force_cuda == "1", f"FORCE_CUDA={force_cuda}"
    if force_cuda:
        raise ValueError(f"FORCE_CUDA must be 0 or 1, got {force_cuda!r}")
    if torch_cuda is None:
        return False, "torch is not a CUDA build"
    if nvcc is None:
        return False, f"no nvcc in CUDA_HOME={cuda_home}"
    if _major_minor(nvcc)[0] != _major_minor(torch_cuda)[0]:
        return False, f"nvcc {nvcc} in {cuda_home} does not match torch's CUDA {torch_cuda}"
    return True, f"nvcc {nvcc} for torch's CUDA {torch_cuda}"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["decide", "pins", "cuda-build"])
    args = parser.parse_args(argv)
    if args.command == "decide":
        action, requirements, message = decide(probe())
        print(action, " ".join(requirements), message, sep="\n")
    elif args.command == "pins":
        print("\n".join(pins()))
    else:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME as cuda_home  # what setup.py builds with

        build, reason = cuda_build(
            force_cuda=os.environ.get("FORCE_CUDA"), torch_cuda=torch.version.cuda,
            nvcc=nvcc_release(cuda_home), cuda_home=cuda_home,
        )
        print(int(build), reason)


if __name__ == "__main__":
    main()

"""Environment report to paste into a bug report: ``python -m dinov3_m2f.collect_env``.

Versions of Python, numpy, torch (with its CUDA and cuDNN), torchvision, detectron2, fvcore and
OpenCV; whether the compiled extension ``dinov3_m2f._C`` is built, whether it holds CUDA kernels
and for which GPU architectures; the GPUs torch sees. It does not import detectron2 (the
installed version is read from the package metadata), so it works where detectron2 is broken.
"""
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple

import numpy as np
import torch

from . import __version__
from .layers import _extension

__all__ = ["collect_env", "cuda_archs", "describe_cuda_kernels", "find_cuobjdump", "format_env"]

# The operator whose CUDA kernel tells whether the extension was compiled with CUDA.
_PROBE_OP = "dinov3_m2f::ms_deform_attn_forward"
# cuobjdump names each embedded image "<library>.<n>.sm_<arch>.cubin" (or ".ptx").
_EMBEDDED_IMAGE = re.compile(r"\.(sm_\d+[a-z]?)\.(cubin|ptx)\b")
_CUOBJDUMP_TIMEOUT_S = 60


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def find_cuobjdump() -> Optional[str]:
    """Returns:
    Optional[str]: a ``cuobjdump`` executable: on ``PATH``, in ``$CUDA_HOME/bin``, or the copy
    bundled with triton (installed with CUDA builds of torch); None if there is none.
    """
    candidates = [shutil.which("cuobjdump")]
    if "CUDA_HOME" in os.environ:
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.origin is not None:
        candidates.append(os.path.join(os.path.dirname(triton.origin), "backends", "nvidia", "bin",
                                       "cuobjdump"))
    return next((c for c in candidates if c is not None and os.access(c, os.X_OK)), None)


def cuda_archs(cuobjdump_listing: str) -> List[str]:
    """The GPU code embedded in a library, from ``cuobjdump --list-elf --list-ptx`` output.

    Args:
        cuobjdump_listing: the tool's standard output.

    Returns:
        List[str]: sorted entries such as ``"sm_80"`` (machine code) and ``"sm_90 (PTX)"``.
    """
    archs = set()
    for arch, kind in _EMBEDDED_IMAGE.findall(cuobjdump_listing):
        archs.add(arch if kind == "cubin" else f"{arch} (PTX)")
    return sorted(archs, key=lambda a: (int(re.search(r"\d+", a).group()), a))


def describe_cuda_kernels(library: str, *, has_cuda_kernels: bool, cuobjdump: Optional[str]) -> str:
    """Whether a compiled library holds CUDA kernels, and for which architectures.

    Args:
        library: path of the shared library.
        has_cuda_kernels: whether its operators registered CUDA kernels.
        cuobjdump: the ``cuobjdump`` executable (:func:`find_cuobjdump`), or None.

    Returns:
        str: ``"yes: sm_80, sm_90"``, ``"no (CPU kernels only)"``, or ``"yes; architectures
        unknown (<why>)"`` when cuobjdump is missing or fails.
    """
    if not has_cuda_kernels:
        return "no (CPU kernels only)"
    if cuobjdump is None:
        return "yes; architectures unknown (cuobjdump not found)"
    listing = subprocess.run(
        [cuobjdump, "--list-elf", "--list-ptx", library],
        capture_output=True, text=True, timeout=_CUOBJDUMP_TIMEOUT_S,
    )
    if listing.returncode != 0:
        output = listing.stderr.strip() or f"exit code {listing.returncode}"
        return f"yes; architectures unknown ({cuobjdump}: {output.splitlines()[-1]})"
    return "yes: " + ", ".join(cuda_archs(listing.stdout))


def _extension_rows() -> List[Tuple[str, str]]:
    if not _extension.is_available():
        return [("dinov3_m2f._C", f"not built ({_extension._LOAD_ERROR})")]
    library = importlib.util.find_spec(_extension.EXTENSION_MODULE).origin
    kernels = describe_cuda_kernels(
        library,
        has_cuda_kernels=torch._C._dispatch_has_kernel_for_dispatch_key(_PROBE_OP, "CUDA"),
        cuobjdump=find_cuobjdump(),
    )
    return [("dinov3_m2f._C", f"built @ {library}"), ("  CUDA kernels", kernels)]


def _torch_rows() -> List[Tuple[str, str]]:
    rows = [("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}")]
    if torch.version.cuda is not None:
        rows.append(("  built with CUDA", torch.version.cuda))
        rows.append(("  cuDNN", str(torch.backends.cudnn.version())))
        rows.append(("  CUDA architectures", " ".join(torch.cuda.get_arch_list()) or "none"))
    elif getattr(torch.version, "hip", None) is not None:
        rows.append(("  built with ROCm", torch.version.hip))
    else:
        rows.append(("  built with CUDA", "no (CPU build)"))
    rows.append(("CUDA_HOME", os.environ.get("CUDA_HOME", "not set")))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows.append(("GPU available", f"yes ({count})" if count else "no"))
    for index in range(count):
        major, minor = torch.cuda.get_device_capability(index)
        rows.append((f"  GPU {index}", f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"))
    return rows


def _opencv_version() -> str:
    try:
        import cv2
    except ImportError as exc:
        return f"not importable ({exc})"
    return cv2.__version__


def collect_env() -> List[Tuple[str, str]]:
    """Returns:
    List[Tuple[str, str]]: (name, value) rows of the report, in print order.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("numpy", np.__version__),
        ("dinov3_m2f", f"{__version__} @ {package}"),
    ]
    rows += _extension_rows()
    rows += _torch_rows()
    rows.append(("torchvision", _installed("torchvision")))
    detectron2 = importlib.util.find_spec("detectron2")  # locates it without importing it
    where = f" @ {os.path.dirname(detectron2.origin)}" if detectron2 and detectron2.origin else ""
    rows.append(("detectron2", _installed("detectron2") + where))
    rows.append(("fvcore", _installed("fvcore")))
    rows.append(("OpenCV", _opencv_version()))
    rows.append(("rasterio", _installed("rasterio")))  # the geo extra: GeoTIFF scenes
    return rows


def format_env(rows: List[Tuple[str, str]]) -> str:
    """Args:
        rows: (name, value) rows from :func:`collect_env`.

    Returns:
        str: one ``name  value`` line per row, values aligned.
    """
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


if __name__ == "__main__":
    print(format_env(collect_env()))

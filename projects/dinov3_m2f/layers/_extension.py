"""Loader for the compiled extension ``dinov3_m2f._C``.

The package must import without the extension (e.g. a source checkout that was never built);
only code that explicitly asks for the compiled operators fails, with instructions to build them.
"""
import importlib
import logging
from typing import Optional

logger = logging.getLogger(__name__)

EXTENSION_MODULE = "dinov3_m2f._C"
BUILD_INSTRUCTIONS = (
    "Build it from the repository root with `pip install --no-build-isolation -e .` "
    "(set FORCE_CUDA=1 and CUDA_HOME to compile the CUDA kernels without a visible GPU)."
)


def _load() -> Optional[str]:
    """Import the extension; return None on success, else the reason it could not be loaded."""
    try:
        importlib.import_module(EXTENSION_MODULE)
    except (ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# Reason the extension is unavailable (None when loaded). Tests monkeypatch it to simulate a
# missing build.
_LOAD_ERROR: Optional[str] = _load()
_WARNED_MISSING = False


def is_available() -> bool:
    """Returns:
    bool: whether ``torch.ops.dinov3_m2f`` operators from the compiled extension are usable.
    """
    return _LOAD_ERROR is None


def require(what: str) -> None:
    """Raise a RuntimeError with build instructions if the extension is missing.

    Args:
        what: name of the feature that needs the extension, used in the message.
    """
    if _LOAD_ERROR is not None:
        raise RuntimeError(
            f"{what} needs the compiled extension {EXTENSION_MODULE}, which could not be loaded "
            f"({_LOAD_ERROR}). {BUILD_INSTRUCTIONS}"
        )


def warn_missing_once(what: str) -> None:
    """Log (once per process) that ``what`` falls back to the pure PyTorch implementation.

    Args:
        what: name of the feature that falls back.
    """
    global _WARNED_MISSING
    if _WARNED_MISSING:
        return
    _WARNED_MISSING = True
    logger.warning(
        "%s: compiled extension %s is not available (%s); using the slower pure PyTorch "
        "implementation. %s",
        what,
        EXTENSION_MODULE,
        _LOAD_ERROR,
        BUILD_INSTRUCTIONS,
    )

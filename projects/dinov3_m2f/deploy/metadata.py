"""What an exported model records about itself (JSON, no torch import).

Stored under :data:`METADATA_KEY`: in an ONNX file as a ``metadata_props`` entry, in a ``.pt2``
archive as the extra file of that name. Fields:

* ``format_version``: :data:`FORMAT_VERSION`.
* ``class_names``: the C class names, in output-channel order.
* ``class_colors``: C ``[r, g, b]`` colours, or None (the runner then uses a fixed palette).
* ``input``: ``{"dtype": "uint8" | "float32", "range": [0, 255], "layout": "BCHW RGB"}``.
* ``input_size``: the ``[H, W]`` traced at export; ``dynamic``: whether batch, H and W are free.
* ``pixel_mean``, ``pixel_std`` (0..255 scale) and ``size_divisibility``: applied inside the model.
* ``config_file``, ``checkpoint``: where the model came from.
"""
import json
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["FORMAT_VERSION", "INPUT_DTYPES", "METADATA_KEY", "check_input_size", "make_metadata", "parse_metadata"]

METADATA_KEY = "dinov3_m2f"
FORMAT_VERSION = 1
INPUT_DTYPES = ("uint8", "float32")
# The value range of the image input, whatever its dtype.
INPUT_RANGE = (0, 255)
# Channels of the RGB input.
RGB_CHANNELS = 3
_REQUIRED = ("format_version", "class_names", "input", "dynamic")


def make_metadata(
    *,
    class_names: Sequence[str],
    class_colors: Optional[Sequence[Sequence[int]]],
    input_dtype: str,
    input_size: Sequence[int],
    dynamic: bool,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    size_divisibility: int,
    config_file: str,
    checkpoint: str,
) -> Dict[str, Any]:
    """The metadata dict of an exported model (see the module docstring for the fields)."""
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")
    if class_colors is not None and len(class_colors) != len(class_names):
        raise ValueError(f"{len(class_colors)} class colours for {len(class_names)} classes")
    return {
        "format_version": FORMAT_VERSION,
        "class_names": list(class_names),
        "class_colors": [list(map(int, c)) for c in class_colors] if class_colors is not None else None,
        "input": {"dtype": input_dtype, "range": list(INPUT_RANGE), "layout": "BCHW RGB"},
        "input_size": list(map(int, input_size)),
        "dynamic": bool(dynamic),
        "pixel_mean": list(map(float, pixel_mean)),
        "pixel_std": list(map(float, pixel_std)),
        "size_divisibility": int(size_divisibility),
        "config_file": config_file,
        "checkpoint": checkpoint,
    }


def parse_metadata(text: str, *, path: str) -> Dict[str, Any]:
    """Read and check the metadata JSON of the exported model ``path``.

    Args:
        text: the stored JSON.
        path: the model file, named in errors.

    Returns:
        The metadata dict.
    """
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON ({e})") from e
    missing: List[str] = [k for k in _REQUIRED if k not in metadata] if isinstance(metadata, dict) else list(_REQUIRED)
    if missing:
        raise ValueError(f"{path}: the '{METADATA_KEY}' metadata lacks {missing}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path}: metadata format_version {metadata['format_version']} is not the supported "
            f"{FORMAT_VERSION}; export the model again with this version of dinov3_m2f"
        )
    return metadata


def check_input_size(metadata: Dict[str, Any], height: int, width: int, *, path: str) -> None:
    """Raise a ValueError naming ``path`` when an H x W input does not suit the exported model.

    A dynamic export takes sides from ``size_divisibility + 1`` (33) up: the coarsest feature map
    needs two cells, one cell was never traced. A static export takes its ``input_size`` only.
    """
    if metadata["dynamic"]:
        min_side = int(metadata.get("size_divisibility", 1)) + 1
        if min(height, width) < min_side:
            raise ValueError(f"{path}: H and W must be at least {min_side}, got {height}x{width} "
                             f"(pad or resize smaller images)")
        return
    expected = tuple(metadata.get("input_size") or ())
    if expected and (height, width) != expected:
        raise ValueError(f"{path} was exported for {expected[0]}x{expected[1]} inputs, got {height}x{width}; "
                         "export it with --dynamic for other sizes")

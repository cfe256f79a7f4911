"""Export :class:`~dinov3_m2f.deploy.module.SemSegExportModule` as a ``torch.export`` program
(``.pt2``) or as an ONNX file.

Both formats start from one ``torch.export`` capture in which every deformable attention is the
registered custom op ``dinov3_m2f::ms_deform_attn_forward`` (so the compiled extension must be
built). The ``.pt2`` program keeps that op: it runs wherever ``import dinov3_m2f`` registers it.
The ONNX file lowers it to standard operators (:mod:`dinov3_m2f.deploy.onnx_ops`), so it needs
neither torch nor this project to run.
"""
import json
import logging
from typing import Any, Callable, Dict, Mapping, Tuple

import torch
from torch.export import Dim, ExportedProgram

from ..layers import _extension
from .metadata import INPUT_DTYPES, INPUT_RANGE, METADATA_KEY, check_input_size, parse_metadata
from .module import SemSegExportModule, deform_attn_impl

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ONNX_OPSET",
    "INPUT_NAME",
    "MIN_ONNX_OPSET",
    "OUTPUT_NAMES",
    "example_image",
    "export_onnx",
    "export_program",
    "load_program",
    "load_program_runner",
    "save_program",
]

INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "labels")
MIN_ONNX_OPSET = 17
DEFAULT_ONNX_OPSET = 18
# A dynamic batch is traced with this many images: a batch of 1 would be specialised to 1.
DYNAMIC_EXAMPLE_BATCH = 2
_TORCH_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


def example_image(
    *, height: int, width: int, batch: int = 1, dtype: str = "uint8", seed: int = 0
) -> torch.Tensor:
    """A random RGB batch [batch, 3, height, width] with values in 0..255 of ``dtype``.

    Args:
        height: image height.
        width: image width.
        batch: number of images.
        dtype: "uint8" or "float32".
        seed: random seed.
    """
    if dtype not in INPUT_DTYPES:
        raise ValueError(f"dtype must be one of {INPUT_DTYPES}, got {dtype!r}")
    generator = torch.Generator().manual_seed(seed)
    low, high = INPUT_RANGE
    image = torch.randint(low, high + 1, (batch, 3, height, width), generator=generator)
    return image.to(_TORCH_DTYPES[dtype])


def export_program(
    module: SemSegExportModule, example: torch.Tensor, *, dynamic: bool
) -> ExportedProgram:
    """Capture ``module`` with ``torch.export`` (deformable attention as the compiled op).

    Args:
        module: the model to export; it is put in eval mode.
        example: an input batch [B, 3, H, W] (uint8 or float32, 0..255); its dtype and, unless
            ``dynamic``, its shape are those of the exported program. With ``dynamic`` the batch
            must hold at least :data:`DYNAMIC_EXAMPLE_BATCH` images, and H, W must exceed the
            module's ``size_divisibility``.
        dynamic: make the batch size, height and width free (each side > ``size_divisibility``:
            the coarsest feature map keeps two cells or more).

    Returns:
        The exported program.
    """
    _extension.require("exporting a model (torch.export captures the compiled deformable-attention op)")
    if dynamic and example.shape[0] < DYNAMIC_EXAMPLE_BATCH:
        raise ValueError(
            f"a dynamic export needs an example batch of >= {DYNAMIC_EXAMPLE_BATCH} images "
            f"(got {example.shape[0]}); a batch of 1 would be fixed to 1"
        )
    # The coarsest feature map must have two cells per side, else it would be fixed to one.
    min_side = module.size_divisibility + 1
    if dynamic and min(example.shape[-2:]) < min_side:
        raise ValueError(
            f"a dynamic export needs an example of at least {min_side}x{min_side} pixels, got "
            f"{tuple(example.shape[-2:])}; the exported model then takes sizes from {min_side} up"
        )
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = {INPUT_NAME: {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    module.eval()
    with deform_attn_impl(module, "compiled"), torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)


def save_program(program: ExportedProgram, path: str, *, metadata: Mapping[str, Any]) -> None:
    """Write ``program`` to ``path`` (``.pt2``) with ``metadata`` as the extra file
    :data:`~dinov3_m2f.deploy.metadata.METADATA_KEY`."""
    torch.export.save(program, path, extra_files={METADATA_KEY: json.dumps(metadata)})


def load_program(path: str) -> Tuple[ExportedProgram, Dict[str, Any]]:
    """Load a ``.pt2`` written by :func:`save_program`.

    Running it needs the op registered, i.e. ``import dinov3_m2f`` with the extension built.

    Args:
        path: the ``.pt2`` file.

    Returns:
        (program, metadata). ``program.module()(image)`` returns ``(probs, labels)``.
    """
    extra = {METADATA_KEY: ""}
    program = torch.export.load(path, extra_files=extra)
    if not extra[METADATA_KEY]:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata; was it written by tools/export_model.py?")
    return program, parse_metadata(extra[METADATA_KEY], path=path)


def load_program_runner(path: str) -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """The module of the ``.pt2`` ``path``, with the input size checked before it runs.

    A program guards its input shapes with raw symbolic expressions; this says instead what the
    model takes (a dynamic export: H and W of at least ``size_divisibility + 1``; a static one:
    its export size), naming the file.

    Returns:
        images [B, 3, H, W] -> (probs [B, C, H, W], labels [B, H, W]).
    """
    program, metadata = load_program(path)
    module = program.module()

    def run(images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"{path}: images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        check_input_size(metadata, *images.shape[-2:], path=path)
        return module(images)

    return run


def export_onnx(
    module: SemSegExportModule,
    path: str,
    *,
    example: torch.Tensor,
    dynamic: bool,
    metadata: Mapping[str, Any],
    opset: int = DEFAULT_ONNX_OPSET,
) -> None:
    """Write ``module`` as an ONNX model (input ``image``, outputs ``probs`` and ``labels``).

    Args:
        module: the model to export.
        path: the ``.onnx`` file. Weights over 2 GB go to an external data file beside it.
        example: an input batch, as for :func:`export_program`.
        dynamic: free batch size, height and width.
        metadata: stored as the model's ``metadata_props[METADATA_KEY]`` (JSON).
        opset: ONNX opset, at least :data:`MIN_ONNX_OPSET`.
    """
    from .onnx_ops import onnx_translation_table  # needs onnxscript, only for ONNX

    if opset < MIN_ONNX_OPSET:
        raise ValueError(f"opset must be >= {MIN_ONNX_OPSET}, got {opset}")
    program = export_program(module, example, dynamic=dynamic)
    onnx_program = torch.onnx.export(
        program,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        custom_translation_table=onnx_translation_table(),
        verbose=False,
    )
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    onnx_program.save(path)
    logger.info("Wrote ONNX model (opset %d, %s shapes) to %s", opset, "dynamic" if dynamic else "static", path)

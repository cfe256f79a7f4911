#!/usr/bin/env python3
"""Parameter counts and inference FLOPs of a config's model, as markdown tables.

Parameters: total, trainable and frozen, for the whole model and per module down to ``--depth``
levels (depth 1 = backbone / sem_seg_head / criterion; depth 2 adds e.g. backbone.adapter,
sem_seg_head.pixel_decoder, sem_seg_head.predictor).

FLOPs: fvcore's ``FlopCountAnalysis`` (through detectron2's tracing wrapper) on one inference
forward of a random ``--input-size H W`` image, in the model's test mode. Like fvcore, one
multiply-add counts as one FLOP. Handles added for operators fvcore does not know:

    multi-scale deformable attention (our compiled op; traced as
    ``prim::PythonOp._MSDeformAttnFunction``, or ``dinov3_m2f::ms_deform_attn_forward``):
        B * Q * heads * L * P * 5 * C
        (bilinear sampling: 4 multiply-adds per channel, attention weighting: 1 per channel;
        the sampling-coordinate arithmetic is not counted)
    aten::scaled_dot_product_attention:
        B * heads * Lq * Lk * (E + Ev)   (q @ k^T and attn @ v; softmax not counted)

Operators still without a handle (elementwise ops, padding, ...) are listed under the table as
uncounted, with their call counts.

Examples:
    python tools/analyze_model.py --config-file configs/synthetic/m2f_tiny_synthetic.py
    python tools/analyze_model.py --config-file configs/ade20k/m2f_vitl16_lvd1689m_512.py \
        --input-size 512 512 --opts model.backbone.weights=null model.test_mode=whole
"""
import argparse
import logging
import math
import sys
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import dinov3_m2f.d2  # noqa: F401  before detectron2: imports it without its import-time warnings
from detectron2.config import instantiate
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from dinov3_m2f.d2.config import load_config
from dinov3_m2f.d2.trainer import resolve_device

logger = logging.getLogger(__name__)

MS_DEFORM_ATTN_OPS = (
    "prim::PythonOp._MSDeformAttnFunction",
    "dinov3_m2f::ms_deform_attn_forward",
)
SDPA_OP = "aten::scaled_dot_product_attention"
# Multiply-adds per sampled point and channel: 4 bilinear corners + 1 attention weight.
MS_DEFORM_ATTN_MACS_PER_CHANNEL = 5
# detectron2's tracing wrapper names the model "model" in module paths.
TRACED_PREFIX = "model."
GIGA = 1e9
MEGA = 1e6


def ms_deform_attn_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """FLOPs (multiply-adds) of one multi-scale deformable attention call.

    Inputs as traced: value [B, S, heads, C], spatial_shapes, level_start_index,
    sampling_locations [B, Q, heads, L, P, 2], attention_weights [B, Q, heads, L, P].
    """
    value_shape = get_shape(inputs[0])
    locations_shape = get_shape(inputs[3])
    channels = value_shape[3]
    points = math.prod(locations_shape[:-1])  # B * Q * heads * L * P
    return points * channels * MS_DEFORM_ATTN_MACS_PER_CHANNEL


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """FLOPs of ``scaled_dot_product_attention``: q [..., Lq, E], k [..., Lk, E], v [..., Lk, Ev]."""
    q_shape, k_shape, v_shape = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q_shape[:-2])
    return batch * q_shape[-2] * k_shape[-2] * (q_shape[-1] + v_shape[-1])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig file")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=(512, 512),
                        help="image size of the FLOP count")
    parser.add_argument("--depth", type=int, default=2, help="module levels in the tables")
    parser.add_argument("--device", default="cpu",
                        help="device of the FLOP trace: cpu | cuda | cuda:<i> | auto")
    parser.add_argument("--no-flops", action="store_true", help="parameters only")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides key=value (last option)")
    return parser.parse_args(argv)


def count_parameters(model: nn.Module, *, depth: int) -> Dict[str, Tuple[int, int]]:
    """(trainable, frozen) parameter counts per module prefix up to ``depth`` levels.

    Args:
        model: the model.
        depth: deepest module level reported; ``""`` holds the whole model.

    Returns:
        ``{prefix: (trainable, frozen)}`` with ``""`` for the total.
    """
    counts: Dict[str, List[int]] = defaultdict(lambda: [0, 0])
    for name, param in model.named_parameters():
        parts = name.split(".")[:-1]  # module path without the parameter name
        column = 0 if param.requires_grad else 1
        for level in range(min(depth, len(parts)) + 1):
            counts[".".join(parts[:level])][column] += param.numel()
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _millions(n: int) -> str:
    return f"{n / MEGA:.3f}M"


def parameter_table(counts: Dict[str, Tuple[int, int]]) -> str:
    rows = ["| module | total | trainable | frozen |", "|---|---|---|---|"]
    for name in sorted(counts):
        trainable, frozen = counts[name]
        label = name or "(model total)"
        rows.append(
            f"| {label} | {_millions(trainable + frozen)} | {_millions(trainable)} | "
            f"{_millions(frozen)} |"
        )
    return "\n".join(rows)


def count_flops(model: nn.Module, *, input_size: Tuple[int, int], device: torch.device):
    """Trace one inference forward; returns (FLOPs per module, uncounted op counts)."""
    image = torch.randint(0, 256, (3, *input_size), dtype=torch.uint8, device=device)  # [3, H, W]
    analysis = FlopCountAnalysis(model, ([{"image": image}],))
    analysis.set_op_handle(
        **{op: ms_deform_attn_flop_jit for op in MS_DEFORM_ATTN_OPS}, **{SDPA_OP: sdpa_flop_jit}
    )
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_module = {
        (k[len(TRACED_PREFIX):] if k.startswith(TRACED_PREFIX) else k): v
        for k, v in analysis.by_module().items()
    }
    by_module[""] = analysis.total()
    return by_module, analysis.unsupported_ops()


def flop_table(flops: Dict[str, int], names: Sequence[str]) -> str:
    rows = ["| module | GFLOPs |", "|---|---|"]
    for name in names:
        rows.append(f"| {name or '(model total)'} | {flops.get(name, 0) / GIGA:.3f} |")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the tables; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.depth < 1:
        raise ValueError(f"--depth must be >= 1, got {args.depth}")
    cfg = load_config(args.config_file, overrides=args.opts)
    device = resolve_device(args.device)
    model = instantiate(cfg.model).to(device).eval()

    counts = count_parameters(model, depth=args.depth)
    trainable, frozen = counts[""]
    print(f"## Parameters of {args.config_file}\n")
    print(f"total {trainable + frozen:,} = trainable {trainable:,} + frozen {frozen:,}\n")
    print(parameter_table(counts))
    if args.no_flops:
        return 0

    height, width = args.input_size
    logger.info("Tracing one inference forward at %dx%d (test_mode=%s)",
                height, width, getattr(model, "test_mode", "n/a"))
    with torch.no_grad():
        flops, uncounted = count_flops(model, input_size=(height, width), device=device)
    print(f"\n## Inference FLOPs at {height}x{width} (1 multiply-add = 1 FLOP)\n")
    print(flop_table(flops, sorted(counts)))
    if uncounted:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items()))
        print(f"\nUncounted operators (no FLOP handle; not in the numbers above): {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

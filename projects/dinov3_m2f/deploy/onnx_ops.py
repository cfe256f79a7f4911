"""ONNX lowering of the compiled deformable-attention op ``dinov3_m2f::ms_deform_attn_forward``.

``torch.export`` captures the compiled op as one node (the PyTorch reference path reads the level
sizes from the ``spatial_shapes`` tensor, which a graph capture cannot do). The ONNX exporter then
replaces that node with :func:`ms_deform_attn_onnx`: the same computation as
:func:`dinov3_m2f.layers.ms_deform_attn_pytorch`, bilinear ``GridSample`` per level with zero
padding, weighted by the attention weights, in standard ONNX operators only. The level sizes stay
graph values, so the lowering works for dynamic input sizes too, and any ONNX runtime runs it
without this project's extension.

Written against ONNX opset 18, the opset of PyTorch's own ONNX translations; the exporter converts
the whole graph to the requested opset.
"""
import logging
from typing import Callable, Dict

import torch
from onnxscript import opset18 as op

logger = logging.getLogger(__name__)

__all__ = ["ms_deform_attn_onnx", "onnx_translation_table"]


def _dim(shape, index: int):
    """Dimension ``index`` of a 1-D shape tensor, as a 1-element int64 tensor."""
    return op.Slice(shape, [index], [index + 1])


def ms_deform_attn_onnx(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """ONNX graph of multi-scale deformable attention (onnxscript, traced by the exporter).

    Args:
        value: [B, S, M, C] (M heads, C channels per head).
        spatial_shapes: [L, 2] int64, (H_l, W_l) per level.
        level_start_index: [L] int64, start of each level along S.
        sampling_locations: [B, Q, M, L, P, 2], (x, y) in [0, 1].
        attention_weights: [B, Q, M, L, P].

    Returns:
        [B, Q, M * C].
    """
    num_levels = sampling_locations.shape[3]  # static: the module's n_levels
    value_shape = op.Shape(value)
    batch, heads, channels = _dim(value_shape, 0), _dim(value_shape, 2), _dim(value_shape, 3)
    num_queries = _dim(op.Shape(sampling_locations), 1)
    batch_heads = op.Mul(batch, heads)
    # GridSample's coordinates are in [-1, 1] (align_corners=0: -1 and 1 are the outer pixel edges)
    grids = op.Sub(
        op.Mul(sampling_locations, op.CastLike(2.0, sampling_locations)),
        op.CastLike(1.0, sampling_locations),
    )  # [B, Q, M, L, P, 2]
    sampled = []
    for level in range(num_levels):
        size = op.Gather(spatial_shapes, op.Constant(value_int=level), axis=0)  # [2] = (h, w)
        start = op.Gather(level_start_index, op.Constant(value_ints=[level]), axis=0)  # [1]
        end = op.Add(start, op.Mul(_dim(size, 0), _dim(size, 1)))
        value_l = op.Slice(value, start, end, [1])  # [B, h*w, M, C]
        value_l = op.Transpose(value_l, perm=[0, 2, 3, 1])  # [B, M, C, h*w]
        value_l = op.Reshape(value_l, op.Concat(batch_heads, channels, size, axis=0))  # [B*M, C, h, w]
        grid_l = op.Gather(grids, op.Constant(value_int=level), axis=3)  # [B, Q, M, P, 2]
        grid_l = op.Transpose(grid_l, perm=[0, 2, 1, 3, 4])  # [B, M, Q, P, 2]
        grid_l = op.Reshape(
            grid_l, op.Concat(batch_heads, num_queries, op.Constant(value_ints=[-1, 2]), axis=0)
        )  # [B*M, Q, P, 2]
        sampled.append(
            op.GridSample(value_l, grid_l, align_corners=0, mode="bilinear", padding_mode="zeros")
        )  # [B*M, C, Q, P]
    stacked = op.Concat(*sampled, axis=-1)  # [B*M, C, Q, L*P], level-major like the weights
    weights = op.Transpose(attention_weights, perm=[0, 2, 1, 3, 4])  # [B, M, Q, L, P]
    weights = op.Reshape(
        weights,
        op.Concat(batch_heads, op.Constant(value_ints=[1]), num_queries, op.Constant(value_ints=[-1]), axis=0),
    )  # [B*M, 1, Q, L*P]
    output = op.ReduceSum(op.Mul(stacked, weights), op.Constant(value_ints=[-1]), keepdims=0)  # [B*M, C, Q]
    output = op.Reshape(output, op.Concat(batch, op.Mul(heads, channels), num_queries, axis=0))
    return op.Transpose(output, perm=[0, 2, 1])  # [B, Q, M*C]


def onnx_translation_table() -> Dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export``: the compiled op -> its ONNX graph."""
    return {torch.ops.dinov3_m2f.ms_deform_attn_forward.default: ms_deform_attn_onnx}

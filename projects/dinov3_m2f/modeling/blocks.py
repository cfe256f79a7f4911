"""Small building blocks shared by the adapter and the Mask2Former head."""
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

# Number of groups of every GroupNorm built from the string "GN" (as in Mask2Former / DINOv3).
GROUP_NORM_GROUPS = 32

NormSpec = Union[str, Callable[[int], nn.Module], None]


def get_norm(norm: NormSpec, num_channels: int) -> Optional[nn.Module]:
    """Build a 2D normalization layer from a short name or a factory.

    Args:
        norm: ``"BN"`` (``nn.BatchNorm2d``), ``"SyncBN"`` (``nn.SyncBatchNorm``), ``"GN"``
            (``nn.GroupNorm`` with :data:`GROUP_NORM_GROUPS` groups), ``""`` / ``None`` (no norm), or a
            callable ``num_channels -> nn.Module``.
        num_channels: number of channels to normalize.

    Returns:
        The normalization module, or ``None`` when ``norm`` is empty.
    """
    if norm is None or norm == "":
        return None
    if callable(norm):
        module = norm(num_channels)
        if not isinstance(module, nn.Module):
            raise TypeError(f"norm factory must return an nn.Module, got {type(module).__name__}")
        return module
    if norm == "BN":
        return nn.BatchNorm2d(num_channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(num_channels)
    if norm == "GN":
        if num_channels % GROUP_NORM_GROUPS != 0:
            raise ValueError(
                f"norm='GN' needs num_channels divisible by {GROUP_NORM_GROUPS}, got {num_channels}"
            )
        return nn.GroupNorm(GROUP_NORM_GROUPS, num_channels)
    raise ValueError(f"norm must be 'BN', 'SyncBN', 'GN', '' or a callable, got {norm!r}")


def caffe2_xavier_fill_(module: nn.Module) -> None:
    """Caffe2's "XavierFill" of a conv or linear layer, Mask2Former's init of its projections:
    weight uniform in +-sqrt(3 / fan_in) (``kaiming_uniform_`` with ``a=1``), bias 0. (fvcore has
    the same function, but importing ``fvcore.nn`` scripts its losses with ``torch.jit.script``,
    a deprecation warning on every import.)"""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ConvNormAct(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional ``norm`` submodule and an optional activation.

    The norm is stored as the ``norm`` child, so the state-dict keys are ``weight``, ``bias`` and
    ``norm.*`` (the layout of Detectron2 / Mask2Former checkpoints).
    """

    def __init__(
        self,
        *args,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        **kwargs,
    ):
        """
        Args:
            *args: positional arguments of ``nn.Conv2d``.
            norm: normalization applied after the convolution.
            activation: function applied after the normalization.
            **kwargs: keyword arguments of ``nn.Conv2d``.
        """
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class MLP(nn.Module):
    """Stack of ``nn.Linear`` layers with ReLU between them (none after the last).

    Args:
        input_dim: input features.
        hidden_dim: features of the hidden layers.
        output_dim: output features.
        num_layers: number of linear layers.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        in_dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        out_dims = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(in_dims, out_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


def channels_and_stride(spec) -> Tuple[int, int]:
    """Read ``(channels, stride)`` from a feature shape description.

    Args:
        spec: a ``(channels, stride)`` pair, or any object with ``channels`` and ``stride`` attributes
            (e.g. Detectron2's ``ShapeSpec``).

    Returns:
        ``(channels, stride)`` as ints.
    """
    if hasattr(spec, "channels") and hasattr(spec, "stride"):
        return int(spec.channels), int(spec.stride)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return int(spec[0]), int(spec[1])
    raise TypeError(f"expected a (channels, stride) pair or a ShapeSpec-like object, got {spec!r}")


def grid_reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Cell centres of every level of a pyramid, normalized to [0, 1], as (x, y).

    Args:
        shapes: (h, w) of every level.
        device: device of the result.

    Returns:
        Tensor [sum(h * w), 2] float32, levels concatenated in order, row-major inside a level.
    """
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height  # [h]
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width  # [w]
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [h, w]
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)


def split_levels(tokens: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
    """Split flattened multi-level tokens back into one feature map per level.

    Args:
        tokens: [B, sum(h * w), C], levels concatenated in order, row-major inside a level.
        shapes: (h, w) of every level, in token order.

    Returns:
        One map [B, C, h, w] per level.
    """
    batch, _, channels = tokens.shape
    sizes = [h * w for h, w in shapes]
    return [
        level.transpose(1, 2).reshape(batch, channels, h, w)
        for level, (h, w) in zip(tokens.split(sizes, dim=1), shapes)
    ]

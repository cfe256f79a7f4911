"""Mask2Former pixel decoder: deformable-attention encoder over the coarse levels + FPN to stride 4."""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import MSDeformAttn
from .blocks import GROUP_NORM_GROUPS, ConvNormAct, NormSpec, channels_and_stride, get_norm
from .blocks import caffe2_xavier_fill_, grid_reference_points, split_levels
from .position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttnPixelDecoder", "MSDeformAttnEncoderLayer"]

# Number of pixel-decoder levels handed to the transformer decoder (coarsest first).
NUM_OUTPUT_LEVELS = 3
# Whether the pixel decoder leaves autocast and runs in float32 when ``force_fp32`` is None, per
# device type; measured with dev/benchmark.py official (docs/benchmarks.md, "bf16 on the CPU").
# CPU: no. Under bf16 autocast at ViT-S / hidden 256 / 512x512 the whole model ran 1.4-1.5x
# faster with the pixel decoder under autocast than in float32, and its outputs moved from the
# float32 ones about as far as the official segmentor's do under bf16 (1.4x the float32 pixel
# decoder's mean mask-logit difference). CUDA and other devices: yes, as the official head (not
# measured there yet). Hence three states of ``force_fp32``, not two: the measured best differs
# by device, and one model (one config, one checkpoint) runs on both, e.g. trained on a GPU and
# run by the demo on a CPU; True and False pin the choice.
FP32_BY_DEVICE_TYPE = {"cpu": False}


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: multi-scale deformable self-attention, then a ReLU FFN.

    Args:
        d_model: token channels.
        dim_feedforward: hidden channels of the FFN.
        dropout: dropout after the attention, inside and after the FFN.
        n_levels: feature levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(
        self,
        d_model: int,
        *,
        dim_feedforward: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            src: tokens [B, S, C].
            pos: position + level encoding [B, S, C].
            reference_points: [B, S, L, 2] in [0, 1].
            spatial_shapes: [L, 2] int64.
            level_start_index: [L] int64.

        Returns:
            Tensor [B, S, C].
        """
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """Stack of :class:`MSDeformAttnEncoderLayer` with a learned per-level encoding.

    Key layout (as in official checkpoints): ``level_encoding`` and ``encoder.layers.i.*``.

    Args:
        d_model: token channels.
        num_layers: encoder layers.
        n_levels: feature levels.
        **layer_kwargs: keyword arguments of :class:`MSDeformAttnEncoderLayer`.
    """

    def __init__(self, d_model: int, *, num_layers: int, n_levels: int, **layer_kwargs):
        super().__init__()
        layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(d_model, n_levels=n_levels, **layer_kwargs) for _ in range(num_layers)
        )
        self.encoder = nn.ModuleDict({"layers": layers})
        self.level_encoding = nn.Parameter(torch.empty(n_levels, d_model))
        self._init_weights()

    def _init_weights(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_encoding)

    def forward(
        self, srcs: Sequence[torch.Tensor], pos_embeds: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """
        Args:
            srcs: per level [B, C, h_l, w_l].
            pos_embeds: per level position encodings [B, C, h_l, w_l].

        Returns:
            (tokens [B, S, C] with the levels concatenated, list of (h_l, w_l)).
        """
        batch = srcs[0].shape[0]
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        tokens = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)  # [B, S, C]
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_encoding[lvl] for lvl, p in enumerate(pos_embeds)],
            dim=1,
        )  # [B, S, C]
        device = tokens.device
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)  # [L, 2]
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1])
        )  # [L]
        # No padding masks: every query uses the same normalized point on every level. The points
        # stay float32 under autocast, and with them the sampling locations: bfloat16 resolves
        # 1/256 of the image, half a cell of a 128-wide level.
        reference_points = grid_reference_points(shapes, device)  # [S, 2]
        reference_points = reference_points[None, :, None, :].expand(batch, -1, len(shapes), -1)
        for layer in self.encoder.layers:
            tokens = layer(tokens, pos, reference_points, spatial_shapes, level_start_index)
        return tokens, shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder of Mask2Former with a multi-scale deformable-attention encoder.

    The features in ``transformer_in_features`` (e.g. strides 8, 16, 32) are projected to ``conv_dim``
    (1x1 conv + GroupNorm), encoded jointly by the deformable encoder (coarsest level = level 0), and the
    finer features down to ``common_stride`` are added top-down FPN-style (lateral 1x1 conv + upsampled
    coarser map, then a 3x3 conv). A 1x1 conv of the finest map gives the mask features.

    State-dict keys follow the official DINOv3 head: ``input_convs.i.{0,1}``, ``encoder.level_encoding``,
    ``encoder.encoder.layers.i.*``, ``lateral_convs.i(.norm)``, ``output_convs.i(.norm)``, ``mask_feature``.

    Args:
        input_shape: name -> ``(channels, stride)`` (or ShapeSpec-like) of the input features.
        conv_dim: channels of the encoder and the FPN.
        mask_dim: channels of the mask features.
        nheads: encoder attention heads.
        dim_feedforward: encoder FFN hidden channels.
        enc_layers: encoder layers.
        n_points: deformable sampling points per head and level.
        dropout: encoder dropout.
        norm: normalization of the FPN convolutions ("GN", "BN", "SyncBN", "" or a callable).
        transformer_in_features: names of the features given to the encoder.
        common_stride: stride of the mask features.
        upsample_mode: ``F.interpolate`` mode of the FPN top-down path ("bilinear" or "nearest").
        force_fp32: run in float32 even under autocast (True, as the official head), under
            autocast (False), or as chosen for the device type of the input (None, see
            :data:`FP32_BY_DEVICE_TYPE`: float32 on CUDA, autocast on CPU).
    """

    def __init__(
        self,
        input_shape: Mapping[str, object],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        enc_layers: int = 6,
        n_points: int = 4,
        dropout: float = 0.0,
        norm: NormSpec = "GN",
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        common_stride: int = 4,
        upsample_mode: str = "bilinear",
        force_fp32: Optional[bool] = None,
    ):
        super().__init__()
        shapes = {name: channels_and_stride(spec) for name, spec in input_shape.items()}
        missing = [f for f in transformer_in_features if f not in shapes]
        if missing:
            raise ValueError(f"transformer_in_features {missing} are not in input_shape {sorted(shapes)}")
        if len(transformer_in_features) < NUM_OUTPUT_LEVELS:
            raise ValueError(
                f"need at least {NUM_OUTPUT_LEVELS} transformer_in_features, got {list(transformer_in_features)}"
            )
        if upsample_mode not in ("bilinear", "nearest"):
            raise ValueError(f"upsample_mode must be 'bilinear' or 'nearest', got {upsample_mode!r}")

        # encoder levels, coarsest first (level 0 = largest stride)
        self.transformer_in_features = sorted(transformer_in_features, key=lambda f: -shapes[f][1])
        min_encoder_stride = shapes[self.transformer_in_features[-1]][1]
        # FPN levels: finer than the encoder, not finer than common_stride; coarsest first
        self.fpn_in_features = sorted(
            (f for f, (_, s) in shapes.items() if common_stride <= s < min_encoder_stride),
            key=lambda f: -shapes[f][1],
        )
        if not self.fpn_in_features or shapes[self.fpn_in_features[-1]][1] != common_stride:
            raise ValueError(f"input_shape {shapes} has no feature at common_stride={common_stride}")
        self.upsample_mode = upsample_mode
        self.force_fp32 = force_fp32

        self.input_convs = nn.ModuleList()
        for name in self.transformer_in_features:
            proj = nn.Sequential(
                nn.Conv2d(shapes[name][0], conv_dim, kernel_size=1),
                nn.GroupNorm(GROUP_NORM_GROUPS, conv_dim),
            )
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_convs.append(proj)

        self.encoder = MSDeformAttnEncoder(
            conv_dim,
            num_layers=enc_layers,
            n_levels=len(self.transformer_in_features),
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            n_heads=nheads,
            n_points=n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        use_bias = norm is None or norm == ""
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for name in self.fpn_in_features:
            lateral = ConvNormAct(
                shapes[name][0], conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output = ConvNormAct(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            caffe2_xavier_fill_(lateral)
            caffe2_xavier_fill_(output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

        self.mask_feature = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        caffe2_xavier_fill_(self.mask_feature)

    def _upsample(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        align_corners = False if self.upsample_mode == "bilinear" else None
        return F.interpolate(x, size=size, mode=self.upsample_mode, align_corners=align_corners)

    def runs_in_fp32(self, device: torch.device) -> bool:
        """Whether the pixel decoder runs in float32 under autocast for inputs on ``device``.

        Args:
            device: device of the input features.

        Returns:
            ``force_fp32`` when set, else the choice of :data:`FP32_BY_DEVICE_TYPE` (True for
            device types it does not list).
        """
        if self.force_fp32 is not None:
            return self.force_fp32
        return FP32_BY_DEVICE_TYPE.get(device.type, True)

    def _forward(
        self, features: Dict[str, torch.Tensor], *, fp32: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        dtype = torch.float32 if fp32 else features[self.transformer_in_features[0]].dtype
        srcs, pos = [], []
        for proj, name in zip(self.input_convs, self.transformer_in_features):
            x = features[name].to(dtype)
            srcs.append(proj(x))  # [B, C, h_l, w_l]
            pos.append(self.pe_layer(x).to(dtype))

        tokens, shapes = self.encoder(srcs, pos)  # [B, S, C]
        outs = split_levels(tokens, shapes)  # each [B, C, h_l, w_l], coarsest first

        for lateral, output, name in zip(self.lateral_convs, self.output_convs, self.fpn_in_features):
            cur = lateral(features[name].to(dtype))  # [B, C, h, w]
            outs.append(output(cur + self._upsample(outs[-1], cur.shape[-2:])))

        return self.mask_feature(outs[-1]), outs[:NUM_OUTPUT_LEVELS]

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features: name -> [B, C_in, H/s, W/s] for every feature of ``input_shape``.

        Returns:
            (mask_features [B, mask_dim, H/common_stride, W/common_stride],
            multi-scale features: 3 maps [B, conv_dim, h, w], coarsest first).
        """
        device = features[self.transformer_in_features[0]].device
        if self.runs_in_fp32(device):
            with torch.autocast(device_type=device.type, enabled=False):
                return self._forward(features, fp32=True)
        return self._forward(features, fp32=False)

"""ViT-Adapter (extractor-only variant used by DINOv3) turning a frozen ViT into a 4-level pyramid."""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils import checkpoint
from torchvision.ops import StochasticDepth

from ..layers import MSDeformAttn
from .blocks import NormSpec, get_norm, grid_reference_points, split_levels

__all__ = ["DINOv3Adapter"]

# Strides of the spatial-prior levels that the extractors refine (1/8, 1/16, 1/32).
QUERY_STRIDES = (8, 16, 32)
# Output strides; the 1/4 level comes from the SPM stem plus an upsampled 1/8 level.
OUT_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
# Input height and width must be multiples of the coarsest stride.
SIZE_DIVISIBILITY = max(QUERY_STRIDES)
# LayerNorm eps of the extractors (ViT-Adapter convention).
EXTRACTOR_LN_EPS = 1e-6
# Extra extractors appended to the last interaction block.
NUM_EXTRA_EXTRACTORS = 2


class DWConv(nn.Module):
    """Depth-wise 3x3 convolution applied separately to each level of a flattened token pyramid.

    Args:
        dim: channels.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, level_shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """
        Args:
            x: tokens [B, N, C], N = sum(h * w) over ``level_shapes``.
            level_shapes: (h, w) of every level, in token order.

        Returns:
            Tensor [B, N, C].
        """
        maps = split_levels(x, level_shapes)  # each [B, C, h, w]
        return torch.cat([self.dwconv(fmap).flatten(2).transpose(1, 2) for fmap in maps], dim=1)


class ConvFFN(nn.Module):
    """Feed-forward block with a depth-wise convolution between the two linear layers.

    Args:
        dim: input/output channels.
        hidden_dim: hidden channels.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, level_shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        x = self.fc1(x)  # [B, N, hidden]
        x = self.act(self.dwconv(x, level_shapes))
        return self.fc2(x)  # [B, N, dim]


class Extractor(nn.Module):
    """Spatial-prior tokens attend (deformably) to one ViT layer, then a ConvFFN refines them.

    Args:
        dim: token channels (the ViT width).
        num_heads: deformable attention heads.
        n_points: sampling points per head.
        deform_ratio: value-projection width ratio of the deformable attention.
        with_cffn: add the ConvFFN branch.
        cffn_ratio: hidden width ratio of the ConvFFN.
        drop_path: stochastic-depth probability of the ConvFFN branch.
        with_cp: activation checkpointing while training.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        n_points: int,
        deform_ratio: float,
        with_cffn: bool,
        cffn_ratio: float,
        drop_path: float,
        with_cp: bool,
    ):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=EXTRACTOR_LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=EXTRACTOR_LN_EPS)
        self.attn = MSDeformAttn(
            d_model=dim, n_levels=1, n_heads=num_heads, n_points=n_points, ratio=deform_ratio
        )
        self.with_cffn = with_cffn
        self.with_cp = with_cp
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
            self.ffn_norm = nn.LayerNorm(dim, eps=EXTRACTOR_LN_EPS)
            self.drop_path = StochasticDepth(drop_path, mode="row")

    def _forward(self, query: torch.Tensor, feat: torch.Tensor, *geometry) -> torch.Tensor:
        """:meth:`forward` without activation checkpointing."""
        reference_points, spatial_shapes, level_start_index, query_shapes = geometry
        attn = self.attn(
            self.query_norm(query), reference_points, self.feat_norm(feat), spatial_shapes, level_start_index
        )
        query = query + attn  # [B, N, D]
        if self.with_cffn:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))
        return query

    def forward(
        self,
        query: torch.Tensor,
        feat: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        query_shapes: Sequence[Tuple[int, int]],
    ) -> torch.Tensor:
        """
        Args:
            query: spatial-prior tokens [B, N, D] (levels 1/8, 1/16, 1/32 concatenated).
            feat: ViT patch tokens [B, S, D].
            reference_points: [B, N, 1, 2] in [0, 1].
            spatial_shapes: [1, 2] int64, (h, w) of the ViT token grid.
            level_start_index: [1] int64 (zero).
            query_shapes: (h, w) of the three query levels.

        Returns:
            Updated query tokens [B, N, D].
        """
        args = (query, feat, reference_points, spatial_shapes, level_start_index, query_shapes)
        if self.with_cp and self.training and query.requires_grad:
            return checkpoint.checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


class InteractionBlock(nn.Module):
    """One extractor (plus optional extra extractors) reading one ViT layer.

    Args:
        dim: token channels.
        num_extra_extractors: extractors run after the main one on the same ViT layer.
        **extractor_kwargs: keyword arguments of :class:`Extractor`.
    """

    def __init__(self, dim: int, *, num_extra_extractors: int, **extractor_kwargs):
        super().__init__()
        self.extractor = Extractor(dim, **extractor_kwargs)
        if num_extra_extractors > 0:
            self.extra_extractors = nn.ModuleList(
                Extractor(dim, **extractor_kwargs) for _ in range(num_extra_extractors)
            )
        else:
            self.extra_extractors = None

    def forward(self, query: torch.Tensor, feat: torch.Tensor, *args) -> torch.Tensor:
        """Runs the extractors in order; ``args`` are forwarded to :meth:`Extractor.forward`."""
        query = self.extractor(query, feat, *args)
        if self.extra_extractors is not None:
            for extractor in self.extra_extractors:
                query = extractor(query, feat, *args)
        return query


class SpatialPriorModule(nn.Module):
    """Small CNN giving spatial-prior features at strides 4, 8, 16 and 32, projected to ``embed_dim``.

    Args:
        inplanes: stem channels (stride 4); strides 8/16/32 have 2x/4x/4x as many.
        embed_dim: output channels of all four levels.
        norm: normalization after each convolution, see :func:`get_norm`.
    """

    def __init__(self, *, inplanes: int, embed_dim: int, norm: NormSpec):
        super().__init__()

        def conv_norm_relu(in_ch: int, out_ch: int, stride: int) -> List[nn.Module]:
            return [
                nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
                get_norm(norm, out_ch),
                nn.ReLU(inplace=True),
            ]

        self.stem = nn.Sequential(
            *conv_norm_relu(3, inplanes, 2),
            *conv_norm_relu(inplanes, inplanes, 1),
            *conv_norm_relu(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*conv_norm_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_norm_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_norm_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, kernel_size=1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, kernel_size=1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x: image [B, 3, H, W].

        Returns:
            Four maps [B, embed_dim, H/s, W/s] for s = 4, 8, 16, 32.
        """
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


class DINOv3Adapter(nn.Module):
    """ViT-Adapter around a frozen DINOv3 ViT, producing a feature pyramid at strides 4..32.

    A spatial prior CNN gives tokens at strides 8/16/32 (``level_embed`` added). For every ViT layer in
    ``interaction_indexes`` an interaction block lets those tokens gather information from the layer's
    patch tokens with single-level deformable attention (extractor only, no injector: the ViT is not
    modified). The last block has extra extractors. The refined tokens, plus the bilinearly resized ViT
    layers (``add_vit_feature``), are normalized into ``res2..res5``; ``res2`` is the stride-4 SPM map
    plus a 2x transposed-conv upsampling of the stride-8 level.

    State-dict keys follow the official DINOv3 adapter (``spm.*``, ``interactions.i.extractor.*``,
    ``interactions.i.extra_extractors.j.*``, ``up``, ``norm1..norm4``, ``level_embed``, ``backbone.*``).

    Args:
        backbone: ViT with ``embed_dim``, ``patch_size`` and
            ``get_intermediate_layers(x, n=..., return_class_token=True, norm=True)``. The ViT owns
            its freezing and its autocast (:class:`DinoVisionTransformer` ``frozen`` and
            ``autocast_dtype``); its outputs are cast to the input dtype.
        interaction_indexes: 0-based ViT block indices read by the interaction blocks.
        conv_inplane: stem channels of the spatial prior module.
        n_points: deformable sampling points per head.
        deform_num_heads: deformable attention heads.
        drop_path_rate: stochastic depth of the ConvFFN branches (same rate in every extractor).
        with_cffn: use ConvFFN branches in the extractors.
        cffn_ratio: hidden width ratio of the ConvFFN.
        deform_ratio: value-projection width ratio of the deformable attention.
        add_vit_feature: add the resized ViT layers to the outputs.
        use_extra_extractor: append extra extractors to the last interaction block.
        with_cp: activation checkpointing of the extractors while training.
        norm: normalization of the SPM and the output norms: "BN", "SyncBN", "GN" or a callable.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        interaction_indexes: Sequence[int],
        conv_inplane: int = 64,
        n_points: int = 4,
        deform_num_heads: int = 16,
        drop_path_rate: float = 0.3,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        deform_ratio: float = 0.5,
        add_vit_feature: bool = True,
        use_extra_extractor: bool = True,
        with_cp: bool = False,
        norm: NormSpec = "BN",
    ):
        super().__init__()
        interaction_indexes = [int(i) for i in interaction_indexes]
        if not interaction_indexes:
            raise ValueError("interaction_indexes must not be empty")
        n_blocks = getattr(backbone, "n_blocks", None)
        if n_blocks is not None and not all(0 <= i < n_blocks for i in interaction_indexes):
            raise ValueError(
                f"interaction_indexes {interaction_indexes} out of range for a backbone with {n_blocks} blocks"
            )
        if add_vit_feature and len(interaction_indexes) != len(OUT_STRIDES):
            raise ValueError(
                f"add_vit_feature=True needs {len(OUT_STRIDES)} interaction_indexes (one per output level), "
                f"got {interaction_indexes}"
            )
        if norm is None or norm == "":
            raise ValueError("DINOv3Adapter needs a norm ('BN', 'SyncBN', 'GN' or a callable)")

        self.backbone = backbone
        self.interaction_indexes = interaction_indexes
        self.add_vit_feature = add_vit_feature
        self.patch_size = int(backbone.patch_size)
        embed_dim = int(backbone.embed_dim)

        self.level_embed = nn.Parameter(torch.zeros(len(QUERY_STRIDES), embed_dim))
        self.spm = SpatialPriorModule(inplanes=conv_inplane, embed_dim=embed_dim, norm=norm)
        last = len(interaction_indexes) - 1
        self.interactions = nn.ModuleList(
            InteractionBlock(
                embed_dim,
                num_extra_extractors=NUM_EXTRA_EXTRACTORS if (use_extra_extractor and i == last) else 0,
                num_heads=deform_num_heads,
                n_points=n_points,
                deform_ratio=deform_ratio,
                with_cffn=with_cffn,
                cffn_ratio=cffn_ratio,
                drop_path=drop_path_rate,
                with_cp=with_cp,
            )
            for i in range(len(interaction_indexes))
        )
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2)
        self.norm1 = get_norm(norm, embed_dim)
        self.norm2 = get_norm(norm, embed_dim)
        self.norm3 = get_norm(norm, embed_dim)
        self.norm4 = get_norm(norm, embed_dim)

        self.out_channels = embed_dim
        self.out_strides = dict(OUT_STRIDES)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in [self.spm, self.interactions, self.up]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        # the generic Linear init above must not replace the deformable-attention init
        for m in self.interactions.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def _vit_layers(self, x: torch.Tensor) -> List[torch.Tensor]:
        layers = self.backbone.get_intermediate_layers(
            x, n=self.interaction_indexes, return_class_token=True, norm=True
        )
        return [patch.to(x.dtype) for patch, _cls in layers]  # each [B, h*w, D]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: normalized images [B, 3, H, W], H and W multiples of 32.

        Returns:
            dict with "res2".."res5": [B, D, H/s, W/s] for s = 4, 8, 16, 32 (D = ``out_channels``).
        """
        batch, _, height, width = x.shape
        if height % SIZE_DIVISIBILITY or width % SIZE_DIVISIBILITY:
            raise ValueError(
                f"DINOv3Adapter: input size {height}x{width} (HxW) is not divisible by {SIZE_DIVISIBILITY}"
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"DINOv3Adapter: input size {height}x{width} (HxW) is not divisible by the patch size "
                f"{self.patch_size}"
            )
        query_shapes = [(height // s, width // s) for s in QUERY_STRIDES]
        token_shape = (height // self.patch_size, width // self.patch_size)

        c1, *prior = self.spm(x)  # c1: [B, D, H/4, W/4]; prior: 1/8, 1/16, 1/32
        query = torch.cat(
            [level.flatten(2).transpose(1, 2) + self.level_embed[i] for i, level in enumerate(prior)],
            dim=1,
        )  # [B, N, D]

        vit_tokens = self._vit_layers(x)
        reference_points = grid_reference_points(query_shapes, x.device)  # [N, 2]
        reference_points = reference_points[None, :, None, :].expand(batch, -1, 1, -1).to(query.dtype)
        spatial_shapes = torch.tensor([token_shape], dtype=torch.long, device=x.device)  # [1, 2]
        level_start_index = torch.zeros(1, dtype=torch.long, device=x.device)  # [1]

        for block, feat in zip(self.interactions, vit_tokens):
            query = block(query, feat, reference_points, spatial_shapes, level_start_index, query_shapes)

        c2, c3, c4 = split_levels(query, query_shapes)  # [B, D, H/s, W/s] for s = 8, 16, 32
        c1 = c1 + self.up(c2)
        maps = [c1, c2, c3, c4]

        if self.add_vit_feature:
            for i, tokens in enumerate(vit_tokens):
                (vit_map,) = split_levels(tokens, [token_shape])  # [B, D, h, w]
                maps[i] = maps[i] + F.interpolate(
                    vit_map, size=maps[i].shape[-2:], mode="bilinear", align_corners=False
                )

        norms = [self.norm1, self.norm2, self.norm3, self.norm4]
        return {name: norm(m) for name, norm, m in zip(OUT_STRIDES, norms, maps)}

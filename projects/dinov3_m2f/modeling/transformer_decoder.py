"""Mask2Former transformer decoder: learnable queries with masked cross-attention over 3 scales."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import MLP, caffe2_xavier_fill_
from .position_encoding import PositionEmbeddingSine

__all__ = ["MultiScaleMaskedTransformerDecoder"]

# Layers of the MLP that turns a query into its mask embedding.
MASK_EMBED_LAYERS = 3
# Mask probability below which a query may not attend to a pixel.
ATTN_MASK_THRESHOLD = 0.5


def _multihead_attention(
    attn: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attend_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Batch-first multi-head attention with the parameters of an ``nn.MultiheadAttention``.

    Uses ``F.scaled_dot_product_attention`` so a per-(batch, query) mask is broadcast over the heads
    instead of being repeated per head.

    Args:
        attn: module holding ``in_proj_weight``, ``in_proj_bias``, ``out_proj`` and ``num_heads``.
        query: [B, Q, C].
        key: [B, S, C].
        value: [B, S, C].
        attend_mask: [B, 1, Q, S] bool, True where the query may attend, or None.

    Returns:
        Tensor [B, Q, C].
    """
    batch, num_q, channels = query.shape
    heads = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split_heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (heads, channels // heads)).transpose(1, 2)  # [B, heads, L, C/heads]

    q = split_heads(F.linear(query, w_q, b_q))
    k = split_heads(F.linear(key, w_k, b_k))
    v = split_heads(F.linear(value, w_v, b_v))
    dropout = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend_mask, dropout_p=dropout)
    out = out.transpose(1, 2).reshape(batch, num_q, channels)  # [B, Q, C]
    return attn.out_proj(out)


class _ResidualLayer(nn.Module):
    """Base of the decoder layers: ``tgt + dropout(branch(x))`` with a LayerNorm ``self.norm``.

    Post-norm normalizes the residual sum; pre-norm normalizes the branch input ``x`` instead.
    Subclasses register their modules (among them ``norm`` and ``dropout``), set ``pre_norm`` and
    call :meth:`_xavier_init`.
    """

    norm: nn.LayerNorm
    dropout: nn.Dropout
    pre_norm: bool

    def _xavier_init(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _residual(self, tgt: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.dropout(branch(x))
        return tgt if self.pre_norm else self.norm(tgt)


class _AttentionLayer(_ResidualLayer):
    """A residual ``nn.MultiheadAttention`` stored as the subclass's ``attn_name`` (official key name).

    Args:
        d_model: channels.
        nhead: heads.
        dropout: attention and residual dropout.
        pre_norm: normalize before the attention instead of after the residual sum.
    """

    attn_name: str

    def __init__(self, d_model: int, nhead: int, *, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.add_module(self.attn_name, nn.MultiheadAttention(d_model, nhead, dropout=dropout))
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        self._xavier_init()


class SelfAttentionLayer(_AttentionLayer):
    """Query self-attention with residual and LayerNorm (post-norm or pre-norm); arguments of
    :class:`_AttentionLayer`."""

    attn_name = "self_attn"
    self_attn: nn.MultiheadAttention

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tgt: queries [B, Q, C].
            query_pos: query position embedding [B, Q, C].

        Returns:
            Tensor [B, Q, C].
        """

        def attend(x: torch.Tensor) -> torch.Tensor:
            q = x + query_pos
            return _multihead_attention(self.self_attn, q, q, x)

        return self._residual(tgt, attend)


class CrossAttentionLayer(_AttentionLayer):
    """Queries attend to one level of pixel features, with an optional attention mask; arguments
    of :class:`_AttentionLayer`."""

    attn_name = "multihead_attn"
    multihead_attn: nn.MultiheadAttention

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        *,
        attend_mask: Optional[torch.Tensor],
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            tgt: queries [B, Q, C].
            memory: pixel features [B, S, C].
            attend_mask: [B, 1, Q, S] bool (True = may attend) or None.
            pos: pixel position embedding [B, S, C].
            query_pos: query position embedding [B, Q, C].

        Returns:
            Tensor [B, Q, C].
        """
        return self._residual(
            tgt,
            lambda x: _multihead_attention(self.multihead_attn, x + query_pos, memory + pos, memory, attend_mask),
        )


class FFNLayer(_ResidualLayer):
    """Two-layer ReLU feed-forward block with residual and LayerNorm (post-norm or pre-norm).

    Args:
        d_model: channels.
        dim_feedforward: hidden channels.
        dropout: hidden and residual dropout.
        pre_norm: normalize before the FFN instead of after the residual sum.
    """

    def __init__(self, d_model: int, dim_feedforward: int, *, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        self._xavier_init()

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tgt: queries [B, Q, C].

        Returns:
            Tensor [B, Q, C].
        """
        return self._residual(tgt, lambda x: self.linear2(self.dropout(F.relu(self.linear1(x)))))


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former transformer decoder (mask classification).

    Learnable queries go through ``dec_layers`` layers of masked cross-attention -> self-attention -> FFN.
    Layer ``i`` reads pixel level ``i % num_feature_levels``; its cross-attention is restricted to the
    pixels where the previous prediction's mask, resized to that level, has probability >= 0.5 (a query
    whose mask is empty everywhere attends to all pixels). A prediction (class logits, mask logits) is
    made from the initial queries and after every layer; all but the last are auxiliary outputs.

    State-dict keys follow Mask2Former / DINOv3 (``transformer_{self,cross}_attention_layers.i``,
    ``transformer_ffn_layers.i``, ``post_norm``, ``query_feat``, ``query_embed``, ``level_embed``,
    ``input_proj.i``, ``class_embed``, ``mask_embed.layers.i``).

    Args:
        in_channels: channels of the multi-scale features.
        num_classes: number of classes (an extra "no object" logit is added).
        hidden_dim: query channels.
        num_queries: number of queries.
        nheads: attention heads.
        dim_feedforward: FFN hidden channels.
        dec_layers: decoder layers.
        pre_norm: pre-norm layers (False = post-norm, as in Mask2Former and DINOv3).
        mask_dim: channels of the mask features.
        enforce_input_project: use a 1x1 input projection even if ``in_channels == hidden_dim``.
        num_feature_levels: levels used round-robin.
        dropout: attention / FFN dropout.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if hidden_dim % nheads != 0:
            raise ValueError(f"hidden_dim={hidden_dim} must be divisible by nheads={nheads}")
        if dec_layers < 1:
            raise ValueError(f"dec_layers must be >= 1, got {dec_layers}")
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_classes = num_classes

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        layer_kwargs = dict(dropout=dropout, pre_norm=pre_norm)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, **layer_kwargs) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, **layer_kwargs) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, **layer_kwargs) for _ in range(dec_layers)
        )
        self.post_norm = nn.LayerNorm(hidden_dim)

        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                caffe2_xavier_fill_(proj)
            else:
                proj = nn.Identity()
            self.input_proj.append(proj)

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, MASK_EMBED_LAYERS)

    def _predict(
        self, queries: torch.Tensor, mask_features: torch.Tensor, attn_size: Tuple[int, int]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class and mask logits of the current queries, and the attention mask for the next layer.

        Returns:
            (class logits [B, Q, C+1], mask logits [B, Q, H, W], attend mask [B, 1, Q, h*w] bool).
        """
        decoded = self.post_norm(queries)  # [B, Q, C]
        class_logits = self.class_embed(decoded)  # [B, Q, K+1]
        mask_embed = self.mask_embed(decoded)  # [B, Q, mask_dim]
        mask_logits = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)  # [B, Q, H, W]

        with torch.no_grad():
            resized = F.interpolate(mask_logits, size=attn_size, mode="bilinear", align_corners=False)
            attend = resized.sigmoid().flatten(2) >= ATTN_MASK_THRESHOLD  # [B, Q, h*w]
            # a query that may attend nowhere attends everywhere instead
            attend = attend | ~attend.any(dim=-1, keepdim=True)
        return class_logits, mask_logits, attend[:, None]

    def forward(
        self, multi_scale_features: Sequence[torch.Tensor], mask_features: torch.Tensor
    ) -> Dict[str, object]:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps [B, in_channels, h_l, w_l] (coarsest first).
            mask_features: [B, mask_dim, H, W].

        Returns:
            dict with "pred_logits" [B, Q, K+1], "pred_masks" [B, Q, H, W] and "aux_outputs": a list of
            ``dec_layers`` dicts with the same keys (initial queries first).
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} multi-scale features, got {len(multi_scale_features)}"
            )
        srcs, pos, sizes = [], [], []
        for lvl, feature in enumerate(multi_scale_features):
            sizes.append(tuple(feature.shape[-2:]))
            pos.append(self.pe_layer(feature).to(feature.dtype).flatten(2).transpose(1, 2))  # [B, HW, C]
            src = self.input_proj[lvl](feature).flatten(2).transpose(1, 2)  # [B, HW, C]
            srcs.append(src + self.level_embed.weight[lvl])

        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)  # [B, Q, C]
        queries = self.query_feat.weight[None].expand(batch, -1, -1)  # [B, Q, C]

        class_logits, mask_logits, attend = self._predict(queries, mask_features, sizes[0])
        predictions: List[Tuple[torch.Tensor, torch.Tensor]] = [(class_logits, mask_logits)]
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            queries = self.transformer_cross_attention_layers[i](
                queries, srcs[lvl], attend_mask=attend, pos=pos[lvl], query_pos=query_pos
            )
            queries = self.transformer_self_attention_layers[i](queries, query_pos)
            queries = self.transformer_ffn_layers[i](queries)
            next_size = sizes[(i + 1) % self.num_feature_levels]
            class_logits, mask_logits, attend = self._predict(queries, mask_features, next_size)
            predictions.append((class_logits, mask_logits))

        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]],
        }

"""Building blocks of the DINOv3 ViT: patch embedding, attention, feed-forward, LayerScale, block.

Submodule and parameter names follow the official checkpoints (``patch_embed.proj``,
``attn.qkv`` with ``bias_mask``, ``attn.proj``, ``mlp.fc1/fc2`` or ``mlp.w1/w2/w3``, ``ls1.gamma``).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .rope import apply_rope

# SwiGLU hidden width = int(int(dim * ffn_ratio) * 2 / 3) rounded up to a multiple of this value.
SWIGLU_ALIGNMENT = {"swiglu": 8, "swiglu32": 32, "swiglu64": 64, "swiglu128": 128}
FFN_LAYERS = ("mlp",) + tuple(SWIGLU_ALIGNMENT)
# Fraction of the nominal FFN width used by each of the two SwiGLU input projections.
_SWIGLU_WIDTH_FACTOR = 2 / 3
# Std of the truncated-normal initialisation of Linear weights (official init).
_LINEAR_INIT_STD = 0.02


def swiglu_hidden_features(hidden_features: int, *, align_to: int) -> int:
    """Width of the SwiGLU hidden layer for a nominal FFN width (official rounding).

    Args:
        hidden_features: nominal width, ``int(dim * ffn_ratio)``.
        align_to: round up to a multiple of this.

    Returns:
        ``int(hidden_features * 2 / 3)`` rounded up to a multiple of ``align_to``.
    """
    width = int(hidden_features * _SWIGLU_WIDTH_FACTOR)
    return width + (-width % align_to)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size x patch_size`` convolution producing a ``[B, h, w, D]`` grid.

    Args:
        patch_size: patch side in pixels.
        in_chans: input channels.
        embed_dim: output channels.
    """

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def reset_parameters(self) -> None:
        """Uniform init with bound ``1 / sqrt(fan_in)`` (official init)."""
        bound = (self.proj.in_channels * self.patch_size**2) ** -0.5
        nn.init.uniform_(self.proj.weight, -bound, bound)
        nn.init.uniform_(self.proj.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, H / p, W / p, D]."""
        return self.proj(x).permute(0, 2, 3, 1)


class LayerScale(nn.Module):
    """Per-channel residual scaling ``x * gamma``.

    Args:
        dim: channels.
        init_value: initial value of ``gamma``.
    """

    def __init__(self, dim: int, *, init_value: float) -> None:
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_value)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class LinearKMaskedBias(nn.Linear):
    """Fused q/k/v projection whose bias is multiplied by the persistent ``bias_mask`` buffer.

    The released checkpoints carry a k-bias that the mask zeroes (ones on the q and v thirds,
    zeros on the k third); the buffer is initialised to that layout.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if out_features % 3 != 0:
            raise ValueError(f"out_features of a fused qkv projection must be divisible by 3, got {out_features}")
        if bias:
            self.register_buffer("bias_mask", self.default_bias_mask(), persistent=True)

    def default_bias_mask(self) -> Tensor:
        """The released layout ``[1 x D, 0 x D, 1 x D]`` (``[3D]``, float32)."""
        third = self.out_features // 3
        mask = torch.ones(self.out_features)  # [3D]
        mask[third : 2 * third] = 0.0
        return mask

    def reset_bias_mask(self) -> None:
        """Set ``bias_mask`` to the released layout (no-op without a bias)."""
        if getattr(self, "bias_mask", None) is not None:
            with torch.no_grad():
                self.bias_mask.copy_(self.default_bias_mask())

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.reset_bias_mask()

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.bias_mask.to(self.bias.dtype)
        return F.linear(x, self.weight, bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused qkv, axial RoPE on patch tokens and SDPA.

    Args:
        dim: model width.
        num_heads: attention heads.
        qkv_bias: bias on the qkv projection.
        proj_bias: bias on the output projection.
        mask_k_bias: multiply the qkv bias by ``bias_mask`` (k third zeroed).
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool, proj_bias: bool, mask_k_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        qkv_cls = LinearKMaskedBias if mask_k_bias else nn.Linear
        self.qkv = qkv_cls(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """Args: x ``[B, N, D]``; rope ``(sin, cos)`` each ``[HW, D_h]`` or None. Returns ``[B, N, D]``."""
        batch, num_tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, N, D_h]
        if rope is not None:
            sin, cos = rope
            q = apply_rope(q, sin, cos)
            k = apply_rope(k, sin, cos)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D_h]
        out = out.transpose(1, 2).reshape(batch, num_tokens, dim)  # [B, N, D]
        return self.proj(out)


class Mlp(nn.Module):
    """Two-layer GELU feed-forward (``fc1`` -> GELU -> ``fc2``)."""

    def __init__(self, dim: int, *, hidden_features: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """Gated feed-forward ``w3(silu(w1 x) * w2 x)``; ``w1`` is the gate."""

    def __init__(self, dim: int, *, hidden_features: int, bias: bool, align_to: int) -> None:
        super().__init__()
        width = swiglu_hidden_features(hidden_features, align_to=align_to)
        self.w1 = nn.Linear(dim, width, bias=bias)
        self.w2 = nn.Linear(dim, width, bias=bias)
        self.w3 = nn.Linear(width, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


def build_ffn(ffn_layer: str, *, dim: int, ffn_ratio: float, bias: bool) -> nn.Module:
    """Build the feed-forward named ``ffn_layer`` (one of :data:`FFN_LAYERS`)."""
    hidden_features = int(dim * ffn_ratio)
    if ffn_layer == "mlp":
        return Mlp(dim, hidden_features=hidden_features, bias=bias)
    if ffn_layer in SWIGLU_ALIGNMENT:
        return SwiGLUFFN(dim, hidden_features=hidden_features, bias=bias, align_to=SWIGLU_ALIGNMENT[ffn_layer])
    raise ValueError(f"Unknown ffn_layer {ffn_layer!r}; expected one of {FFN_LAYERS}")


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    Args:
        dim: model width.
        num_heads: attention heads.
        ffn_layer: feed-forward type (see :data:`FFN_LAYERS`).
        ffn_ratio: nominal FFN width / ``dim``.
        qkv_bias, proj_bias, ffn_bias: biases of the projections.
        mask_k_bias: mask the k third of the qkv bias.
        layerscale_init: initial LayerScale value; None -> no LayerScale.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        ffn_layer: str,
        ffn_ratio: float,
        qkv_bias: bool,
        proj_bias: bool,
        ffn_bias: bool,
        mask_k_bias: bool,
        layerscale_init: Optional[float],
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, mask_k_bias=mask_k_bias
        )
        self.ls1 = LayerScale(dim, init_value=layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = build_ffn(ffn_layer, dim=dim, ffn_ratio=ffn_ratio, bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_value=layerscale_init) if layerscale_init else nn.Identity()

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """Args: x ``[B, N, D]``; rope ``(sin, cos)`` or None. Returns ``[B, N, D]``."""
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


def init_linear_(module: nn.Linear) -> None:
    """Official Linear init: truncated normal (std 0.02) weights, zero bias."""
    nn.init.trunc_normal_(module.weight, std=_LINEAR_INIT_STD)
    if module.bias is not None:
        nn.init.zeros_(module.bias)

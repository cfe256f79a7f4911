"""DINOv3 Vision Transformer backbone (inference / frozen-feature use).

Reproduces the official network: tokens ``[cls, storage x n, patches]``, pre-norm blocks with
LayerScale, axial RoPE on patch tokens, masked k-bias, final LayerNorm. Parameter names match the
official checkpoints. Training-only features of the official model (RoPE coordinate
augmentation, drop path, masked-token pretraining, multi-crop lists) are not implemented.
"""
import contextlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .layers import FFN_LAYERS, LayerScale, LinearKMaskedBias, PatchEmbed, SelfAttentionBlock, init_linear_
from .rope import RopePositionEmbedding, compute_rope_periods

# LayerNorm epsilon of every released DINOv3 ViT ("layernormbf16" in the official code).
LAYER_NORM_EPS = 1e-5
# Std of the normal initialisation of the class and storage tokens (official init).
_TOKEN_INIT_STD = 0.02
# Modules whose weights may be stored in a reduced-precision dtype (see ``storage_dtype``): autocast
# runs them in its low-precision dtype whatever their stored dtype, so storing them that way changes
# no output. LayerNorm, LayerScale, the tokens and the buffers stay float32 (< 0.1% of the weights):
# autocast keeps norms in float32 and the residual stream follows the float32 class token.
LOW_PRECISION_MODULES = (nn.Linear, nn.Conv2d)

IntermediateOutput = Union[Tensor, Tuple[Tensor, ...]]


class DinoVisionTransformer(nn.Module):
    """DINOv3 ViT with official state_dict key names.

    Args:
        patch_size: patch side in pixels.
        in_chans: input channels.
        embed_dim: model width ``D``.
        depth: number of blocks.
        num_heads: attention heads (``D / num_heads`` divisible by 4 for the axial RoPE).
        ffn_ratio: nominal FFN width / ``D``.
        ffn_layer: ``"mlp"`` (GELU) or ``"swiglu"``, ``"swiglu32"``, ``"swiglu64"``, ``"swiglu128"``
            (SwiGLU with hidden width ``int(int(D * ffn_ratio) * 2 / 3)`` rounded up to 8/32/64/128).
        qkv_bias: bias on the fused qkv projection.
        proj_bias: bias on the attention output projection.
        ffn_bias: biases in the feed-forward.
        n_storage_tokens: storage (register) tokens after the class token.
        layerscale_init: initial LayerScale value; None -> no LayerScale (no ``ls*.gamma`` keys).
        mask_k_bias: multiply the qkv bias by the ``bias_mask`` buffer (k third zero).
        untie_global_and_local_cls_norm: add ``local_cls_norm`` (present in some checkpoints; never
            used at inference).
        rope_base: RoPE base.
        frozen: freeze all parameters and keep eval semantics even when a parent calls ``train()``;
            forward passes then run under ``torch.no_grad()``.
        autocast_dtype: if set (e.g. ``torch.bfloat16``), run the backbone under ``torch.autocast``
            with this dtype on the input's device type (also on CPU). None -> no autocast is entered
            (an enclosing autocast context still applies).

    Attributes:
        embed_dim, patch_size, n_blocks, num_heads, n_storage_tokens, frozen.
    """

    def __init__(
        self,
        *,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        n_storage_tokens: int = 4,
        layerscale_init: Optional[float] = 1e-5,
        mask_k_bias: bool = True,
        untie_global_and_local_cls_norm: bool = False,
        rope_base: float = 100.0,
        frozen: bool = True,
        autocast_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"Unknown ffn_layer {ffn_layer!r}; expected one of {FFN_LAYERS}")
        for name, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if n_storage_tokens < 0:
            raise ValueError(f"n_storage_tokens must be >= 0, got {n_storage_tokens}")
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.n_blocks = depth
        self.num_heads = num_heads
        self.n_storage_tokens = n_storage_tokens
        self.autocast_dtype = autocast_dtype

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if n_storage_tokens > 0:
            self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # used only by masked-image pretraining
        self.rope_embed = RopePositionEmbedding(embed_dim=embed_dim, num_heads=num_heads, base=rope_base)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(
                embed_dim,
                num_heads=num_heads,
                ffn_layer=ffn_layer,
                ffn_ratio=ffn_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                mask_k_bias=mask_k_bias,
                layerscale_init=layerscale_init,
                norm_eps=LAYER_NORM_EPS,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        if untie_global_and_local_cls_norm:
            # Used by the official training on local crops only; kept so checkpoints load strictly.
            self.local_cls_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.init_weights()

        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def init_weights(self) -> None:
        """Random initialisation following the official ``init_weights`` (for tests / from scratch)."""
        nn.init.normal_(self.cls_token, std=_TOKEN_INIT_STD)
        if self.n_storage_tokens > 0:
            nn.init.normal_(self.storage_tokens, std=_TOKEN_INIT_STD)
        nn.init.zeros_(self.mask_token)
        self.rope_embed.reset_parameters()
        self.patch_embed.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear_(module)
                if isinstance(module, LinearKMaskedBias):
                    module.reset_bias_mask()
            elif isinstance(module, (nn.LayerNorm, LayerScale)):
                module.reset_parameters()

    def storage_dtype(self, key: str, dtype: torch.dtype) -> torch.dtype:
        """The dtype tensor ``key`` is stored in when the frozen weights are kept in ``dtype``.

        Args:
            key: a ``state_dict`` key.
            dtype: the dtype chosen for the weights (float32, bfloat16 or float16).

        Returns:
            ``dtype`` for the parameters of :data:`LOW_PRECISION_MODULES` (every Linear, the patch
            embedding), float32 for everything else.
        """
        module_name, _, name = key.rpartition(".")
        module = self.get_submodule(module_name)
        if isinstance(module, LOW_PRECISION_MODULES) and isinstance(getattr(module, name), nn.Parameter):
            return dtype
        return torch.float32

    def initial_value(self, key: str) -> Tensor:
        """The value :meth:`init_weights` gives a tensor that checkpoints may lack (float32, CPU).

        Args:
            key: ``rope_embed.periods``, a ``*.bias_mask``, ``mask_token`` or a LayerNorm's weight or
                bias (``local_cls_norm.*``).

        Returns:
            The RoPE periods of ``rope_base``, the released bias-mask layout, zeros, or the LayerNorm
            identity (ones for the weight, zeros for the bias).
        """
        module_name, _, name = key.rpartition(".")
        module = self.get_submodule(module_name)
        if isinstance(module, RopePositionEmbedding) and name == "periods":
            return compute_rope_periods(head_dim=module.head_dim, base=module.base)
        if isinstance(module, LinearKMaskedBias) and name == "bias_mask":
            return module.default_bias_mask()
        if isinstance(module, nn.LayerNorm) and name in ("weight", "bias"):
            return (torch.ones if name == "weight" else torch.zeros)(module.normalized_shape)
        if key == "mask_token":
            return torch.zeros(1, self.embed_dim)
        raise KeyError(f"DINOv3 tensor {key!r} has no fixed initial value")

    def train(self, mode: bool = True) -> "DinoVisionTransformer":
        """Set train/eval mode; a frozen backbone always stays in eval mode."""
        return super().train(mode and not self.frozen)

    # ------------------------------------------------------------------ internals
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"DINOv3 ViT expects images of shape [B, C, H, W], got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"DINOv3 ViT expects {self.in_chans} input channels, got {x.shape[1]}")
        height, width = x.shape[-2:]
        if height % self.patch_size != 0 or width % self.patch_size != 0:
            raise ValueError(
                f"Input image size {height}x{width} (HxW) is not divisible by the patch size {self.patch_size}"
            )

    def _run_context(self, x: Tensor) -> Tuple[contextlib.AbstractContextManager, ...]:
        """No-grad (when frozen) and autocast (when ``autocast_dtype`` is set) contexts, entered
        together with ``with a, b:`` (torch.compile traces that, but not an ``ExitStack``)."""
        grad = torch.no_grad() if self.frozen else contextlib.nullcontext()
        if self.autocast_dtype is None:
            return grad, contextlib.nullcontext()
        return grad, torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def _prepare_tokens(self, x: Tensor) -> Tuple[Tensor, int, int]:
        """[B, C, H, W] -> tokens [B, 1 + n_storage + h*w, D], h, w."""
        patches = self.patch_embed(x)  # [B, h, w, D]
        batch, h, w, _ = patches.shape
        prefix = [self.cls_token]
        if self.n_storage_tokens > 0:
            prefix.append(self.storage_tokens)
        # Under autocast the patch embedding is low precision while the learned tokens are float32; the
        # token sequence (the residual stream) takes the promoted dtype, as in the official model.
        dtype = torch.promote_types(self.cls_token.dtype, patches.dtype)
        prefix_tokens = torch.cat(prefix, dim=1).to(dtype).expand(batch, -1, -1)  # [B, 1 + S, D]
        return torch.cat([prefix_tokens, patches.flatten(1, 2).to(dtype)], dim=1), h, w

    def _run_blocks(self, x: Tensor, *, keep: Sequence[int]) -> Tuple[List[Tensor], int, int]:
        """Run the blocks, returning the outputs of the blocks in ``keep`` (ascending order)."""
        tokens, h, w = self._prepare_tokens(x)
        rope = self.rope_embed(h=h, w=w)
        wanted = set(keep)
        last = max(wanted)
        outputs = []
        for index, block in enumerate(self.blocks[: last + 1]):
            tokens = block(tokens, rope)  # [B, N, D]
            if index in wanted:
                outputs.append(tokens)
        return outputs, h, w

    def _resolve_block_indices(self, n: Union[int, Sequence[int]]) -> List[int]:
        if isinstance(n, bool) or not isinstance(n, (int, Sequence)):
            raise TypeError(f"n must be an int or a sequence of block indices, got {type(n).__name__}")
        if isinstance(n, int):
            if not 1 <= n <= self.n_blocks:
                raise ValueError(f"n={n} must be between 1 and the number of blocks ({self.n_blocks})")
            return list(range(self.n_blocks - n, self.n_blocks))
        indices = [int(i) for i in n]
        if not indices:
            raise ValueError("n must name at least one block index")
        bad = [i for i in indices if not 0 <= i < self.n_blocks]
        if bad:
            raise ValueError(f"block indices {bad} in n are out of range [0, {self.n_blocks - 1}]")
        if len(set(indices)) != len(indices):
            raise ValueError(f"block indices in n must be unique, got {indices}")
        return sorted(indices)

    # ------------------------------------------------------------------ public API
    def forward_features(self, x: Tensor) -> Dict[str, Tensor]:
        """Run all blocks and the final norm.

        Args:
            x: normalised images ``[B, C, H, W]``, ``H`` and ``W`` divisible by ``patch_size``.

        Returns:
            dict with ``x_norm_clstoken`` ``[B, D]``, ``x_storage_tokens`` ``[B, n_storage, D]``,
            ``x_norm_patchtokens`` ``[B, h*w, D]`` (row-major) and ``x_prenorm`` ``[B, N, D]``.
        """
        self._check_input(x)
        grad_context, autocast_context = self._run_context(x)
        with grad_context, autocast_context:
            (tokens,), _, _ = self._run_blocks(x, keep=[self.n_blocks - 1])
            normed = self.norm(tokens)  # [B, N, D]
        num_prefix = 1 + self.n_storage_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_storage_tokens": normed[:, 1:num_prefix],
            "x_norm_patchtokens": normed[:, num_prefix:],
            "x_prenorm": tokens,
        }

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x)

    def get_intermediate_layers(
        self,
        x: Tensor,
        *,
        n: Union[int, Sequence[int]] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> Tuple[IntermediateOutput, ...]:
        """Outputs of selected blocks (official semantics).

        Args:
            x: normalised images ``[B, C, H, W]``, ``H`` and ``W`` divisible by ``patch_size``.
            n: an int -> the last ``n`` blocks; a sequence -> these 0-based block indices (unique;
                outputs are returned in ascending block order).
            reshape: return patch tokens as ``[B, D, h, w]`` instead of ``[B, h*w, D]``.
            return_class_token: also return the class token ``[B, D]`` of each block.
            return_extra_tokens: also return the storage tokens ``[B, n_storage, D]`` of each block.
            norm: apply the final ``norm`` to each output.

        Returns:
            A tuple with one entry per selected block: the patch tensor, or a tuple
            ``(patches[, cls][, storage])`` when class/extra tokens are requested.
        """
        self._check_input(x)
        indices = self._resolve_block_indices(n)
        num_prefix = 1 + self.n_storage_tokens
        grad_context, autocast_context = self._run_context(x)
        with grad_context, autocast_context:
            outputs, h, w = self._run_blocks(x, keep=indices)
            if norm:
                outputs = [self.norm(out) for out in outputs]
        results = []
        for out in outputs:
            patches = out[:, num_prefix:]  # [B, h*w, D]
            if reshape:
                patches = patches.reshape(out.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()  # [B, D, h, w]
            extras = []
            if return_class_token:
                extras.append(out[:, 0])
            if return_extra_tokens:
                extras.append(out[:, 1:num_prefix])
            results.append((patches, *extras) if extras else patches)
        return tuple(results)

    def extra_repr(self) -> str:
        return f"frozen={self.frozen}, autocast_dtype={self.autocast_dtype}"

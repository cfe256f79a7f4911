"""Mask2Former semantic-segmentation head: pixel decoder + masked transformer decoder."""
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from .blocks import NormSpec
from .class_merge import ClassMerge
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["Mask2FormerHead", "official_dinov3_head_kwargs"]


def official_dinov3_head_kwargs(*, hidden_dim: int = 2048, num_classes: int = 150) -> Dict[str, Any]:
    """Keyword arguments of :class:`Mask2FormerHead` for the shape of the official DINOv3 M2F head.

    The official head fixes 16 heads, FFN width 4096 (encoder and decoder), 6 post-norm deformable
    encoder layers, 9 post-norm decoder layers, 100 queries, GroupNorm, bilinear FPN upsampling and a
    float32 pixel decoder; only ``hidden_dim`` (2048 in the released checkpoints) and ``num_classes``
    vary.

    Args:
        hidden_dim: channels of the pixel decoder and the queries.
        num_classes: number of classes.

    Returns:
        dict to pass as ``Mask2FormerHead(input_shape, **kwargs)``.
    """
    return dict(
        num_classes=num_classes,
        hidden_dim=hidden_dim,
        num_queries=100,
        nheads=16,
        enc_dim_feedforward=4096,
        dec_dim_feedforward=4096,
        enc_layers=6,
        dec_layers=9,
        enc_n_points=4,
        norm="GN",
        pre_norm=False,
        upsample_mode="bilinear",
        pixel_decoder_fp32=True,
    )


class Mask2FormerHead(nn.Module):
    """Mask2Former head for semantic segmentation.

    Defaults are the original Mask2Former ADE20K settings (hidden 256, 8 heads, encoder FFN 1024,
    decoder FFN 2048, 6 encoder and 9 decoder layers, 100 queries, GroupNorm); see
    :func:`official_dinov3_head_kwargs` for the official DINOv3 head. State-dict keys: ``pixel_decoder.*``
    and ``predictor.*`` (official names).

    Args:
        input_shape: name -> ``(channels, stride)`` (or ShapeSpec-like) of the input features,
            e.g. ``{"res2": (D, 4), "res3": (D, 8), "res4": (D, 16), "res5": (D, 32)}``.
        num_classes: number of classes.
        hidden_dim: channels of the pixel decoder, the mask features and the queries.
        num_queries: number of queries.
        nheads: attention heads of the encoder and the decoder.
        enc_dim_feedforward: FFN hidden channels of the deformable encoder.
        dec_dim_feedforward: FFN hidden channels of the transformer decoder.
        enc_layers: deformable encoder layers.
        dec_layers: transformer decoder layers (the number of auxiliary outputs).
        enc_n_points: deformable sampling points per head and level.
        norm: normalization of the FPN convolutions.
        pre_norm: pre-norm transformer decoder layers (False = post-norm).
        upsample_mode: FPN top-down upsampling ("bilinear" or "nearest").
        transformer_in_features: features given to the deformable encoder.
        common_stride: stride of the mask features.
        enforce_input_project: always use 1x1 input projections in the decoder.
        dropout: transformer dropout.
        pixel_decoder_fp32: run the pixel decoder in float32 even under autocast (True, as the
            official head), under autocast (False), or per device type (None: float32 on CUDA,
            autocast on CPU, where it measured 1.4-1.5x faster end to end; see
            ``pixel_decoder.FP32_BY_DEVICE_TYPE``).
        class_merge: optional :class:`ClassMerge` applied to ``pred_logits`` of the final and every
            auxiliary output. ``num_classes`` is then the predictor's (old) class count C_old, which
            must equal ``class_merge.num_old_classes``; the head outputs ``class_merge.num_classes``
            (= N) classes, available as ``self.num_classes``, and the criterion and the
            meta-architecture must use N. Its state-dict keys are ``class_merge.*``; without it the
            head has no such keys.
    """

    def __init__(
        self,
        input_shape: Mapping[str, object],
        *,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        enc_dim_feedforward: int = 1024,
        dec_dim_feedforward: int = 2048,
        enc_layers: int = 6,
        dec_layers: int = 9,
        enc_n_points: int = 4,
        norm: NormSpec = "GN",
        pre_norm: bool = False,
        upsample_mode: str = "bilinear",
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        common_stride: int = 4,
        enforce_input_project: bool = False,
        dropout: float = 0.0,
        pixel_decoder_fp32: Optional[bool] = None,
        class_merge: Optional[ClassMerge] = None,
    ):
        super().__init__()
        if class_merge is not None and class_merge.num_old_classes != num_classes:
            raise ValueError(
                f"class_merge maps {class_merge.num_old_classes} old classes but num_classes={num_classes}; "
                "with a class merge num_classes is the predictor's class count before merging"
            )
        # Classes of the head's output (after the optional merge).
        self.num_classes = num_classes if class_merge is None else class_merge.num_classes
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            input_shape,
            conv_dim=hidden_dim,
            mask_dim=hidden_dim,
            nheads=nheads,
            dim_feedforward=enc_dim_feedforward,
            enc_layers=enc_layers,
            n_points=enc_n_points,
            dropout=dropout,
            norm=norm,
            transformer_in_features=transformer_in_features,
            common_stride=common_stride,
            upsample_mode=upsample_mode,
            force_fp32=pixel_decoder_fp32,
        )
        self.predictor = MultiScaleMaskedTransformerDecoder(
            in_channels=hidden_dim,
            num_classes=num_classes,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            nheads=nheads,
            dim_feedforward=dec_dim_feedforward,
            dec_layers=dec_layers,
            pre_norm=pre_norm,
            mask_dim=hidden_dim,
            enforce_input_project=enforce_input_project,
            dropout=dropout,
        )
        self.class_merge = class_merge

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """
        Args:
            features: name -> [B, C, H/s, W/s] for every feature of ``input_shape`` (e.g. res2..res5).

        Returns:
            dict with "pred_logits" [B, Q, K+1], "pred_masks" [B, Q, H/4, W/4] (logits) and
            "aux_outputs": ``dec_layers`` dicts {"pred_logits", "pred_masks"} (initial queries first);
            K = ``self.num_classes`` (after the class merge, if any).
        """
        mask_features, multi_scale_features = self.pixel_decoder(features)
        outputs = self.predictor(multi_scale_features, mask_features)
        if self.class_merge is not None:
            for out in [outputs, *outputs["aux_outputs"]]:
                out["pred_logits"] = self.class_merge(out["pred_logits"])  # [B, Q, N+1]
        return outputs

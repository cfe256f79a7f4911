"""torch.hub entry points: each returns a :class:`dinov3_m2f.d2.predictor.SemSegPredictor`.

Weights are local files (nothing is downloaded), so loading works offline::

    import torch
    predictor = torch.hub.load(
        "/path/to/dinov3-m2f", "m2f_vitl16_loveda", source="local",
        checkpoint="output/loveda/model_final.pth",
        backbone_weights="checkpoints/dinov3_vitl16_pretrain_sat493m.pth",
    )
    labels = predictor("tile.png")  # [H, W] class ids

``checkpoint`` is a trainable-only or full checkpoint of ``tools/train_net.py`` (or a converted
released head). ``backbone_weights`` is the DINOv3 ViT weights file; it may be left out when
``checkpoint`` is a full checkpoint (it then holds the ViT). Other keyword arguments go to
:meth:`SemSegPredictor.from_config` (``overrides``, e.g. ``["model.test_mode=slide"]``,
``device``, ``autocast``).
"""
import os
import sys
from typing import Callable, Optional, Sequence

dependencies = ["torch", "detectron2"]

_REPO = os.path.dirname(os.path.abspath(__file__))
_PROJECTS = os.path.join(_REPO, "projects")
# Use the dinov3_m2f package of this checkout (also when it is not pip-installed).
if _PROJECTS not in sys.path:
    sys.path.insert(0, _PROJECTS)

from dinov3_m2f.d2.predictor import SemSegPredictor  # noqa: E402


def _entry_point(config: str, description: str, weights: str) -> Callable[..., SemSegPredictor]:
    """A hub entry point that builds the predictor of ``configs/<config>``."""

    def entry(
        *,
        checkpoint: str,
        backbone_weights: Optional[str] = None,
        overrides: Sequence[str] = (),
        **kwargs,
    ) -> SemSegPredictor:
        # The config's default weights path is relative to a training run's working directory;
        # here the ViT comes from backbone_weights or from a full checkpoint.
        vit_weights = "null" if backbone_weights is None else backbone_weights
        return SemSegPredictor.from_config(
            os.path.join(_REPO, "configs", config),
            checkpoint=checkpoint,
            overrides=[f"model.backbone.weights={vit_weights}", *overrides],
            **kwargs,
        )

    entry.__doc__ = f"""{description} (``configs/{config}``).

    Args:
        checkpoint: trainable-only or full checkpoint.
        backbone_weights: {weights}
        kwargs: see the module docstring.

    Returns:
        The predictor.
    """
    return entry


m2f_synthetic_tiny = _entry_point(
    "synthetic/m2f_tiny_synthetic.py",
    "Tiny seeded-random ViT + adapter + Mask2Former on the synthetic 7-class data",
    "leave None: the ViT is rebuilt from its seed.",
)
m2f_vitl16_loveda = _entry_point(
    "loveda/m2f_vitl16_sat493m_512.py",
    "DINOv3 ViT-L/16 (SAT-493M) + Mask2Former on LoveDA, 512 sliding windows",
    "``dinov3_vitl16_pretrain_sat493m`` weights (needed with a trainable-only checkpoint).",
)
m2f_vitl16_ade20k = _entry_point(
    "ade20k/m2f_vitl16_lvd1689m_512.py",
    "DINOv3 ViT-L/16 (LVD-1689M) + Mask2Former on ADE20K-150, 512 sliding windows",
    "``dinov3_vitl16_pretrain_lvd1689m`` weights (needed with a trainable-only checkpoint).",
)
m2f_vit7b16_ade20k_official_head = _entry_point(
    "ade20k/m2f_vit7b16_official_head_eval.py",
    "The released DINOv3 ViT-7B/16 Mask2Former ADE20K segmentor (head converted with "
    "tools/convert_weights.py): 896 windows, 5-scale + flip TTA, bf16 autocast on CUDA",
    "``dinov3_vit7b16_pretrain_lvd1689m`` weights (the converted head does not hold the ViT).",
)

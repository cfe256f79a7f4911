"""A small inference API: config file + checkpoint -> label maps. Example::

    from dinov3_m2f.d2.predictor import SemSegPredictor

    predictor = SemSegPredictor.from_config(
        "configs/loveda/m2f_vitl16_sat493m_512.py",
        checkpoint="output/loveda/model_final.pth",
        overrides=["model.backbone.weights=checkpoints/dinov3_vitl16_pretrain_sat493m.pth",
                   "model.test_mode=tta"],  # optional: the config's test mode otherwise
    )
    labels = predictor("tile.png")                      # [H, W] int64 class ids
    labels, probs = predictor(rgb_array, return_probs=True)  # probs: [C, H, W] float32
    predictor.class_names[labels[0, 0]]
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dinov3_m2f.config_schema import AMP_DTYPES
from dinov3_m2f.data.image import read_image, read_image_header
from dinov3_m2f.data.outputs import ImageTooLargeError
from dinov3_m2f.modeling.torch_compile import compile_parts

from .checkpoint import TrainableCheckpointer
from .config import load_config
from .trainer import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["SemSegPredictor"]

# Accepted values of ``autocast``: "auto" follows cfg.train.amp on CUDA and is off on CPU.
AUTOCAST_CHOICES = ("auto", "none", *AMP_DTYPES)
_UINT8_CHANNELS = 3
# Largest image (height x width) of whole-image inference, where the ViT attends over all the
# patches of the image at once: 2048 x 2048 pixels = 16384 tokens at patch 16. Larger images need
# sliding windows (model.test_mode=slide), or tools/segment_scenes.py for scenes.
MAX_WHOLE_IMAGE_PIXELS = 2048 * 2048
TOO_LARGE_HINT = ("use sliding windows (tools/demo.py --test-mode slide --crop-size 512 512 --stride "
                  "341 341), or tools/segment_scenes.py for large scenes (memory bounded by the window)")


def _test_dataset_name(cfg: DictConfig) -> str:
    """The first dataset of ``cfg.dataloader.test``."""
    names = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
    if names is None:
        raise ValueError(
            "the config has no dataloader.test.dataset.names; the predictor takes its class "
            "names from that dataset's metadata"
        )
    # A folder config registers its dataset through a LazyCall that returns the name.
    names = instantiate(names)
    if not isinstance(names, str):
        names = list(names)[0]
    return names


def _resolve_autocast(autocast: str, cfg: DictConfig, device: torch.device) -> Optional[torch.dtype]:
    if autocast not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {AUTOCAST_CHOICES}, got {autocast!r}")
    if autocast == "auto":
        amp = OmegaConf.select(cfg, "train.amp", default=None)
        if device.type != "cuda" or amp is None or not amp.enabled:
            return None
        return AMP_DTYPES[amp.dtype]
    return None if autocast == "none" else AMP_DTYPES[autocast]


class SemSegPredictor:
    """Runs a semantic segmentation model on single RGB images: the test-time resize of
    ``cfg.dataloader.test.mapper``, the model's test mode, results at the input image size.

    Attributes:
        model, device: the model (in eval mode) and where it runs.
        metadata, class_names: the test dataset's metadata and its ``stuff_classes``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        metadata: Metadata,
        augmentations: Sequence[Union[T.Augmentation, T.Transform]] = (),
        autocast_dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            model: a model returning ``[{"sem_seg": [C, H, W]}]`` in eval mode; put in eval mode.
            metadata: dataset metadata with ``stuff_classes`` (and ``stuff_colors`` for drawing).
            augmentations: test-time transforms applied to the image before the model.
            autocast_dtype: run the model under autocast with this dtype; None = float32.
        """
        self.model = model.eval()
        self.metadata = metadata
        self.class_names: List[str] = list(metadata.stuff_classes)
        self.augmentations = T.AugmentationList(list(augmentations))
        self.autocast_dtype = autocast_dtype
        self.device = next(model.parameters()).device

    @classmethod
    def from_config(
        cls,
        config_file: str,
        *,
        checkpoint: str,
        overrides: Sequence[str] = (),
        device: str = "auto",
        autocast: str = "auto",
    ) -> "SemSegPredictor":
        """Build ``cfg.model`` (compiled as ``cfg.train.compile`` says), load a checkpoint strictly
        and return a predictor.

        Args:
            config_file: LazyConfig file (e.g. ``configs/synthetic/m2f_tiny_synthetic.py``).
            checkpoint: a trainable-only or full ``.pth`` of TrainableCheckpointer, or a
                ``.safetensors`` state dict; trainable-only needs ``model.backbone.weights`` (or
                ``init_seed``) for the frozen ViT.
            overrides: ``key=value`` config overrides, e.g. ``model.backbone.weights=<file>``,
                ``model.test_mode=slide``, ``model.slide_crop_size=[512,512]``,
                ``model.slide_stride=[341,341]``, ``model.tta_scales=[0.75,1.0]``.
            device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:<i>".
            autocast: "auto" (``cfg.train.amp`` on CUDA, float32 on CPU), "none", "bfloat16"
                or "float16".
        """
        if not isinstance(checkpoint, str) or not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint {checkpoint!r} is not a file")
        cfg = load_config(config_file, overrides=overrides)
        metadata = MetadataCatalog.get(_test_dataset_name(cfg))
        mapper = OmegaConf.select(cfg, "dataloader.test.mapper", default=None)
        augmentations = instantiate(mapper.augmentations) if mapper is not None else []

        resolved_device = resolve_device(device)
        model = instantiate(cfg.model).to(resolved_device)
        compile_parts(model, OmegaConf.select(cfg, "train.compile", default=False))
        kind = TrainableCheckpointer(model, strict=True).load(checkpoint).get("checkpoint_kind")
        backbone = cfg.model.backbone
        if kind == "trainable" and not backbone.get("weights") and backbone.get("init_seed") is None:
            raise ValueError(
                f"checkpoint {checkpoint} holds only the trainable weights, but the config gives "
                "the frozen ViT neither weights (model.backbone.weights) nor init_seed; pass the "
                "backbone weights or use a full checkpoint"
            )
        logger.info(
            "SemSegPredictor: %s with %s on %s (test_mode=%s)",
            config_file, checkpoint, resolved_device, getattr(model, "test_mode", "n/a"),
        )
        return cls(
            model,
            metadata=metadata,
            augmentations=augmentations,
            autocast_dtype=_resolve_autocast(autocast, cfg, resolved_device),
        )

    @property
    def max_image_pixels(self) -> Optional[int]:
        """The pixel limit (height x width) of this predictor: ``MAX_WHOLE_IMAGE_PIXELS`` when
        whole images reach the model (test mode "whole", or "tta" without windows, and no
        test-time resize in the config); None otherwise."""
        whole = self.model.test_mode == "whole" or (
            self.model.test_mode == "tta" and self.model.slide_crop_size is None)
        return MAX_WHOLE_IMAGE_PIXELS if whole and not self.augmentations.augs else None

    def check_image_size(self, height: int, width: int, *, name: str = "image") -> None:
        """Raise :class:`ImageTooLargeError` when an image exceeds :attr:`max_image_pixels`."""
        limit = self.max_image_pixels
        if limit is not None and height * width > limit:
            raise ImageTooLargeError(
                f"{name} is {height}x{width} = {height * width} pixels, over the {limit} of "
                f"whole-image inference; {TOO_LARGE_HINT}")

    def _as_image(self, image: Union[np.ndarray, str]) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            return read_image(os.fspath(image), image_format="RGB")
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a path or a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != _UINT8_CHANNELS or image.dtype != np.uint8:
            raise ValueError(
                f"image must be an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}"
            )
        return image

    def predict_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Scores [k, C, h, w] float32 of RGB crops [k, 3, h, w] (0..255, any size), as the model
        scores one sliding window (no test-time resize); the ``predict`` of
        :func:`dinov3_m2f.scenes.segment.segment_scene`."""
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            return self.model.predict_crops(crops.to(self.device)).float()

    def __call__(
        self, image: Union[np.ndarray, str], *, return_probs: bool = False
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Segment one image (RGB uint8 array [H, W, 3] or file path).

        Returns:
            labels: int64 [H, W] class ids. With ``return_probs``, also probs: float32
            [C, H, W], the model's scores (Mask2Former: not normalized to sum to 1).
        """
        if isinstance(image, (str, os.PathLike)):
            self.check_image_size(*read_image_header(os.fspath(image)).displayed_size, name=os.fspath(image))
        original = self._as_image(image)
        height, width = original.shape[:2]
        self.check_image_size(height, width)
        aug_input = T.AugInput(original)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        inputs: Dict = {"image": tensor, "height": height, "width": width}  # image [3, h, w]
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            scores = self.model([inputs])[0]["sem_seg"].float()  # [C, H, W]
        labels = scores.argmax(dim=0).cpu().numpy()  # [H, W]
        if return_probs:
            return labels, scores.cpu().numpy()
        return labels

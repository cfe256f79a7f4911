"""Semantic segmentation with an exported ONNX model on onnxruntime.

Needs numpy and onnxruntime only: no torch, no detectron2, no compiled extension. The model is a
file written by ``tools/export_model.py --format onnx`` (input ``image`` [B, 3, H, W] RGB 0..255,
outputs ``probs`` [B, C, H, W] and ``labels``); its class names and colours come from the
model's metadata.

Inference modes, as in the Detectron2 model (``model.test_mode``):

* whole image: the image goes through the model as it is (the model pads it internally);
* sliding windows: windows of ``crop_size`` every ``stride`` pixels, the last one flush with the
  border, scores averaged where windows overlap (``dinov3_m2f.modeling.slide_inference``).

A model exported with static shapes only takes inputs of its export size: whole-image inference
then needs images of that size, sliding windows need ``crop_size`` equal to it and images at
least that large. A model exported with ``--dynamic`` takes any size.
"""
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from ..windows import sliding_windows
from .metadata import INPUT_RANGE, METADATA_KEY, RGB_CHANNELS, check_input_size, parse_metadata

logger = logging.getLogger(__name__)

__all__ = ["OnnxSemSegmenter"]

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
PROBS_OUTPUT = "probs"
PIXEL_MAX = float(INPUT_RANGE[1])
_ORT_INPUT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class OnnxSemSegmenter:
    """Runs an exported segmentation model with onnxruntime.

    Attributes:
        metadata: the model's metadata (``dinov3_m2f.deploy.metadata``).
        class_names: the C class names.
        class_colors: C RGB colours, or None.
        input_dtype: numpy dtype of the model input (uint8 or float32).
        fixed_size: (H, W) of a statically exported model, None when height and width are free.
    """

    def __init__(
        self,
        path: str,
        *,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        num_threads: Optional[int] = None,
    ):
        """
        Args:
            path: the ``.onnx`` file.
            providers: onnxruntime execution providers, in order of preference.
            num_threads: intra-op threads; None = onnxruntime's default (all cores).
        """
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.path = path
        self.session = ort.InferenceSession(path, sess_options=options, providers=list(providers))
        custom = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise ValueError(f"{path} has no '{METADATA_KEY}' metadata; was it written by tools/export_model.py?")
        self.metadata = parse_metadata(custom[METADATA_KEY], path=path)
        self.class_names: List[str] = list(self.metadata["class_names"])
        self.class_colors = self.metadata.get("class_colors")
        (model_input,) = self.session.get_inputs()
        if model_input.type not in _ORT_INPUT_DTYPES:
            raise ValueError(f"{path}: unsupported input type {model_input.type}")
        self.input_name = model_input.name
        self.input_dtype = _ORT_INPUT_DTYPES[model_input.type]
        height, width = model_input.shape[2:]
        static = isinstance(height, int) and isinstance(width, int)
        self.fixed_size: Optional[Tuple[int, int]] = (height, width) if static else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _pixel_values(self, images: np.ndarray, input_range: Optional[Tuple[float, float]]) -> np.ndarray:
        """``images`` as the model's input dtype on the 0..255 scale; refuses other ranges."""
        if input_range is not None:
            low, high = map(float, input_range)
            if high <= low:
                raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
            scaled = (images.astype(np.float32) - low) * (PIXEL_MAX / (high - low))
            images = np.clip(scaled, 0.0, PIXEL_MAX)
            return np.rint(images) if self.input_dtype == np.uint8 else images
        if images.dtype == np.uint8:
            return images
        if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.number):
            raise ValueError(f"images must be numbers in 0..255, got dtype {images.dtype}")
        low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        hint = "pass input_range=(low, high) to scale them, or convert to uint8 0..255"
        if low < 0 or high > PIXEL_MAX:
            raise ValueError(f"images must have values in 0..255 (RGB, 8-bit scale), got {images.dtype} "
                             f"values in {low:g}..{high:g} (16-bit data?); {hint}")
        if np.issubdtype(images.dtype, np.floating):
            if 0 < high <= 1.0:
                raise ValueError(f"images must have values in 0..255 (RGB, 8-bit scale), got {images.dtype} "
                                 f"values in {low:g}..{high:g}, which look like 0..1; {hint}")
            if self.input_dtype == np.uint8 and not np.array_equal(images, np.rint(images)):
                raise ValueError(f"{self.path} takes uint8 input; got fractional {images.dtype} values; {hint}")
        return images

    def run(self, images: np.ndarray, *, input_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
        """Class probabilities of a batch.

        Args:
            images: [B, 3, H, W] RGB with values in 0..255: uint8, or any numeric type holding
                such values (whole numbers for a uint8 model). Values outside 0..255, and float
                images within 0..1, are refused unless ``input_range`` says how to scale them.
            input_range: (low, high) of ``images``, mapped linearly onto 0..255 (clipped), e.g.
                (0, 1) for float images or (0, 65535) for 16-bit ones.

        Returns:
            float32 [B, C, H, W].
        """
        if images.ndim != 4 or images.shape[1] != RGB_CHANNELS:
            raise ValueError(f"images must be [B, 3, H, W] RGB, got shape {images.shape}")
        check_input_size(self.metadata, *images.shape[2:], path=self.path)
        pixels = self._pixel_values(images, input_range)
        feed = {self.input_name: np.ascontiguousarray(pixels, dtype=self.input_dtype)}
        (probs,) = self.session.run([PROBS_OUTPUT], feed)
        return probs

    def predict(
        self,
        image: np.ndarray,
        *,
        crop_size: Optional[Tuple[int, int]] = None,
        stride: Optional[Tuple[int, int]] = None,
    ) -> np.ndarray:
        """Class probabilities of one image, whole or by sliding windows.

        Args:
            image: RGB uint8 [H, W, 3].
            crop_size: (h, w) window size for sliding-window inference; None = whole image.
                Along an axis where the image is smaller, the window is the whole axis.
            stride: (h, w) window stride, each in [1, crop size]; needed with ``crop_size``.

        Returns:
            float32 [C, H, W].
        """
        if image.ndim != 3 or image.shape[2] != RGB_CHANNELS or image.dtype != np.uint8:
            raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        batch = image.transpose(2, 0, 1)[None]  # [1, 3, H, W]
        if crop_size is None:
            if stride is not None:
                raise ValueError("stride is only used with crop_size (sliding windows)")
            return self.run(batch)[0]
        if stride is None:
            raise ValueError("sliding windows need a stride along with crop_size")
        height, width = image.shape[:2]
        (crop_h, crop_w), windows = sliding_windows(height, width, crop_size=crop_size, stride=stride)
        if self.fixed_size is not None and (crop_h, crop_w) != self.fixed_size:
            raise ValueError(
                f"{self.path} was exported for {self.fixed_size[0]}x{self.fixed_size[1]} inputs, but the "
                f"windows of a {height}x{width} image with crop size {tuple(crop_size)} are "
                f"{crop_h}x{crop_w}; use a crop size equal to the export size on images at least that "
                "large, or export with --dynamic"
            )
        scores = np.zeros((self.num_classes, height, width), dtype=np.float32)
        counts = np.zeros((height, width), dtype=np.float32)
        for y, x in windows:
            scores[:, y : y + crop_h, x : x + crop_w] += self.run(batch[:, :, y : y + crop_h, x : x + crop_w])[0]
            counts[y : y + crop_h, x : x + crop_w] += 1.0
        return scores / counts

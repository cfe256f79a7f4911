"""Reading images as RGB uint8 arrays, the one way every part of the project does it (no detectron2).

Training, evaluation, the predictor, torch.hub, ``tools/demo.py``, ``tools/infer_onnx.py`` and
``tools/check_dataset.py`` all read images through :func:`read_image`, so they see the same pixels:

* **Pixel formats.** Every image becomes RGB uint8 [H, W, 3]. Grayscale (``1``, ``L``) is
  repeated over the three channels. 16-bit images (``I;16`` grayscale, 16-bit RGB/RGBA PNG) are
  scaled over their full range, 0..65535 -> 0..255, by keeping the high byte (the conversion
  Pillow applies to 16-bit colour PNGs, so a 16-bit grayscale image and its 16-bit RGB copy read
  the same); they are never clipped. A 12-bit image stored in 16 bits therefore looks dark:
  rescale such data yourself if that matters. Palette images (``P``, ``PA``) are expanded through
  their palette. ``CMYK`` and ``YCbCr`` use Pillow's conversion (no colour management).
* **Alpha is dropped**, not composited: an ``RGBA``/``LA``/``PA`` pixel keeps its stored colour
  whatever its opacity, as detectron2's ``read_image``, OpenCV's ``imread`` and Pillow's
  ``convert("RGB")`` do, so a model sees the colours the other tools see.
* **Refused**: 32-bit integer (``I``) and floating-point (``F``) images, and colour spaces Pillow
  cannot convert faithfully (``LAB``, ``HSV``): their value range is unknown, so any scaling would
  be a guess. The :class:`UnreadableImageError` names the file and says how to convert it.

**EXIF orientation policy (images and masks together).** Images are used *as displayed*: the EXIF
orientation tag (1..8, also the XMP ``tiff:Orientation``) is applied, as detectron2's
``read_image``, Pillow's ``ImageOps.exif_transpose``, image viewers and annotation tools (labelme,
CVAT) do. A label mask carries no orientation of its own (its EXIF tag, if any, is ignored) and
must line up with the displayed image:

* a mask whose size equals the displayed size is used as it is;
* a mask whose size equals the stored (pre-EXIF) size, and differs from the displayed size, was
  drawn on the stored pixels: it gets the image's orientation transform;
* any other size is an error naming both files.

When the sizes cannot tell (a flip or a 180 degree turn, or a square image), the mask is taken as
displayed; ``tools/check_dataset.py`` lists every image with an EXIF orientation and which size
its mask matched, and ``--visualize`` draws the pairs so such cases can be checked by eye. The
orientation is read from the metadata ahead of the pixel data (for a PNG, the chunks before the
image data, where the PNG specification places ``eXIf``), so the header-only dataset scan and the
full reader always agree.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import ExifTags, Image

__all__ = [
    "IMAGE_FORMATS",
    "ImageHeader",
    "UnreadableImageError",
    "read_image",
    "read_image_and_header",
    "read_image_header",
]

# Channel orders read_image can return.
IMAGE_FORMATS = ("RGB", "BGR")

# Pillow's transpose for each EXIF orientation value (1 = as stored; other values are ignored,
# as viewers do).
_ORIENTATION_TRANSPOSE: Dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations that swap height and width.
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_NO_ORIENTATION = 1

# Modes converted by Pillow: RGB as is, grayscale repeated, YCbCr / CMYK through Pillow's formulas.
_PILLOW_RGB_MODES = frozenset({"1", "L", "RGB", "RGBX", "YCbCr", "CMYK"})
# Modes with an alpha channel (or palette transparency): expanded to RGBA, alpha dropped.
_ALPHA_MODES = frozenset({"P", "PA", "LA", "RGBA"})
# 16-bit grayscale, any byte order.
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# uint16 >> 8 maps 0..65535 onto 0..255 (the high byte).
_UINT16_TO_UINT8_SHIFT = 8
_REFUSED_HINT = (
    "convert it to an 8-bit or 16-bit RGB or grayscale PNG/JPEG/TIFF (older Pillow versions open "
    "16-bit grayscale PNGs in mode 'I'; a current Pillow reads them as 16-bit)"
)
# What Pillow raises for a file that is not an image, is truncated or has a malformed header.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class UnreadableImageError(ValueError):
    """An image file is missing, does not decode, or has a pixel format we refuse.

    Attributes:
        path: the image file.
    """

    def __init__(self, message: str, *, path: str):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, without decoding its pixels.

    Attributes:
        path: the image file.
        stored_size: (H, W) of the pixels as stored in the file.
        orientation: EXIF orientation, 1..8 (1: displayed as stored).
        mode: Pillow mode of the stored pixels (e.g. ``"RGB"``, ``"I;16"``, ``"P"``).
    """

    path: str
    stored_size: Tuple[int, int]
    orientation: int
    mode: str

    @property
    def transpose(self) -> Optional[Image.Transpose]:
        """The Pillow transpose that turns stored pixels into displayed ones (``None``: none)."""
        return _ORIENTATION_TRANSPOSE.get(self.orientation)

    @property
    def displayed_size(self) -> Tuple[int, int]:
        """(H, W) of the image as displayed (after the EXIF orientation)."""
        height, width = self.stored_size
        return (width, height) if self.orientation in _SWAPS_AXES else (height, width)

    @property
    def is_16_bit(self) -> bool:
        """Whether the stored pixels are 16-bit grayscale (scaled to 8 bits when read)."""
        return self.mode in _UINT16_MODES


def _orientation(img: Image.Image) -> int:
    # The base-class getexif reads the metadata parsed so far: for a PNG, the chunks before the
    # image data (PngImageFile.getexif would decode the whole image to look behind it).
    orientation = Image.Image.getexif(img).get(ExifTags.Base.Orientation, _NO_ORIENTATION)
    return orientation if orientation in _ORIENTATION_TRANSPOSE else _NO_ORIENTATION


def _header(img: Image.Image, path: str) -> ImageHeader:
    mode = img.mode
    if mode not in _PILLOW_RGB_MODES | _ALPHA_MODES | _UINT16_MODES:
        raise UnreadableImageError(
            f"cannot read image file {path}: pixel format {mode!r} (Pillow mode) is not supported; "
            + _REFUSED_HINT,
            path=path,
        )
    width, height = img.size
    return ImageHeader(path=path, stored_size=(height, width), orientation=_orientation(img), mode=mode)


def _open(path: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError as e:
        raise UnreadableImageError(f"image file {path} does not exist", path=path) from e
    except _DECODE_ERRORS as e:
        raise UnreadableImageError(f"cannot read image file {path}: {e}", path=path) from e


def read_image_header(path: str) -> ImageHeader:
    """Read an image's size, pixel format and EXIF orientation without decoding its pixels.

    Args:
        path: image file.

    Returns:
        The :class:`ImageHeader`.

    Raises:
        UnreadableImageError: the file does not exist, is not an image, or has a refused pixel
            format; the message names the file. (A file whose pixel data is truncated passes:
            only :func:`read_image` decodes it.)
    """
    with _open(path) as img:
        return _header(img, path)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a decoded image whose mode :func:`_header` accepted."""
    if img.mode in _UINT16_MODES:
        gray = (np.asarray(img) >> _UINT16_TO_UINT8_SHIFT).astype(np.uint8)  # [H, W]
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in _ALPHA_MODES:
        # Through RGBA so that palette transparency is understood; the alpha channel is dropped.
        return np.asarray(img.convert("RGBA"))[:, :, :3]
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def read_image_and_header(path: str, *, image_format: str = "RGB") -> Tuple[np.ndarray, ImageHeader]:
    """:func:`read_image`, also returning the file's :class:`ImageHeader`.

    Args:
        path: image file.
        image_format: ``"RGB"`` or ``"BGR"`` channel order.

    Returns:
        (uint8 [H, W, 3] as displayed, the header).
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    with _open(path) as img:
        header = _header(img, path)  # before decoding: see _orientation
        try:
            img.load()
            if header.transpose is not None:
                img = img.transpose(header.transpose)
            image = _to_rgb(img)  # [H, W, 3]
        except _DECODE_ERRORS as e:
            raise UnreadableImageError(f"cannot read image file {path}: {e}", path=path) from e
    return (image[:, :, ::-1] if image_format == "BGR" else image), header


def read_image(path: str, *, image_format: str = "RGB") -> np.ndarray:
    """Read an image as displayed, as uint8 with three channels (see the module docstring).

    Args:
        path: image file (JPEG, PNG, TIFF, BMP, WebP, ... anything Pillow opens).
        image_format: ``"RGB"`` or ``"BGR"`` channel order.

    Returns:
        uint8 [H, W, 3], EXIF orientation applied.

    Raises:
        UnreadableImageError: the file does not exist, does not decode (truncated, not an image)
            or has a refused pixel format; the message names the file.
    """
    return read_image_and_header(path, image_format=image_format)[0]

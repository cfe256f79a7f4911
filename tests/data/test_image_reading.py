"""One image reader everywhere (dinov3_m2f.data.image / io): bit depths, colour modes, EXIF
orientation of images and masks together. Every file is written by the test."""
import warnings

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from dinov3_m2f.data.image import UnreadableImageError, read_image, read_image_header
from dinov3_m2f.data.masks import read_image_and_mask, read_label_mask, read_mask_for_image

STORED = (32, 48)  # H, W of the stored pixels
HALF = (STORED[0] // 2, STORED[1] // 2)
# Where the stored top-left quadrant ends up once displayed, per EXIF orientation.
DISPLAYED_CORNER = {1: "top-left", 3: "bottom-right", 6: "top-right", 8: "bottom-left"}
# JPEG is lossy: a white/black block is compared with this tolerance.
JPEG_TOLERANCE = 40


def _ramp16(width=256):
    """uint16 [4, width]: 0, 257, ..., 65535 (x * 257 for x in 0..255)."""
    return np.tile((np.arange(width, dtype=np.uint32) * 257).astype(np.uint16), (4, 1))


def test_16_bit_grayscale_is_scaled_over_its_full_range(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(_ramp16()).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(str(path))
    assert image.dtype == np.uint8 and image.shape == (4, 256, 3)
    # 0..65535 -> 0..255 exactly, not clipped to white
    np.testing.assert_array_equal(image[0, :, 0], np.arange(256))
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert read_image_header(str(path)).is_16_bit


def test_16_bit_rgb_reads_like_the_same_16_bit_grayscale(tmp_path):
    ramp = _ramp16()
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.stack([ramp] * 3, axis=-1))  # 16-bit colour PNG
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgb16.png")), read_image(str(tmp_path / "gray16.png")))


def test_grayscale_rgba_palette_and_cmyk_become_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "l.png")), np.stack([gray] * 3, axis=-1))

    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[0, 0, 3] = 0  # fully transparent: colour kept (alpha dropped, not composited)
    rgba[1:, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = read_image(str(tmp_path / "rgba.png"))
    assert image.shape == (3, 4, 3)
    assert (image == (200, 100, 50)).all()

    la = np.stack([gray, np.full_like(gray, 7)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "la.png")), np.stack([gray] * 3, axis=-1))

    palette = Image.new("P", (4, 3))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    palette.putpixel((1, 2), 1)
    palette.info["transparency"] = bytes([255, 0] + [255] * 254)  # entry 1 transparent
    palette.save(tmp_path / "p.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when such a palette goes straight to RGB
        image = read_image(str(tmp_path / "p.png"))
    assert tuple(image[2, 1]) == (10, 200, 30) and tuple(image[0, 0]) == (0, 0, 0)

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = read_image(str(tmp_path / "cmyk.jpg"))
    assert image.shape == (8, 8, 3)
    assert np.abs(image.astype(int) - (255, 0, 0)).max() <= JPEG_TOLERANCE  # cyan-free magenta+yellow = red


@pytest.mark.parametrize("array, mode", [
    (np.full((4, 5), 70000, dtype=np.int32), "I"),
    (np.full((4, 5), 0.5, dtype=np.float32), "F"),
])
def test_32_bit_images_are_refused_naming_file_and_mode(tmp_path, array, mode):
    path = tmp_path / f"deep_{mode}.tif"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(UnreadableImageError, match=rf"{path}.*'{mode}'.*not supported") as info:
        read_image(str(path))
    assert info.value.path == str(path)
    with pytest.raises(UnreadableImageError, match=str(path)):  # the header scan refuses it too
        read_image_header(str(path))


def test_missing_and_undecodable_files_name_the_file(tmp_path):
    with pytest.raises(UnreadableImageError, match=f"image file {tmp_path / 'nope.png'} does not exist"):
        read_image(str(tmp_path / "nope.png"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match=f"cannot read image file {tmp_path / 'bad.jpg'}"):
        read_image(str(tmp_path / "bad.jpg"))
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:-40])
    with pytest.raises(UnreadableImageError, match="cannot read image file .*truncated.png"):
        read_image(str(tmp_path / "truncated.png"))


def _quadrant(value, size=STORED, dtype=np.uint8, channels=None):
    """An array of ``size`` that is ``value`` in its top-left quadrant and 0 elsewhere."""
    shape = size if channels is None else (*size, channels)
    array = np.zeros(shape, dtype=dtype)
    array[: size[0] // 2, : size[1] // 2] = value
    return array


def _exif(orientation):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif


def _write_oriented_jpeg(path, orientation):
    """A JPEG storing a white top-left quadrant on black, with an EXIF orientation tag."""
    Image.fromarray(_quadrant(255, channels=3)).save(path, exif=_exif(orientation), quality=95)


def _corner(array, corner):
    """The quadrant ``corner`` of a 2D/3D array."""
    h, w = array.shape[0] // 2, array.shape[1] // 2
    rows = slice(0, h) if corner.startswith("top") else slice(array.shape[0] - h, None)
    cols = slice(0, w) if corner.endswith("left") else slice(array.shape[1] - w, None)
    return array[rows, cols]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_the_image(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    _write_oriented_jpeg(path, orientation)
    image = read_image(str(path))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(image, expected)  # as every viewer shows it
    assert _corner(image, DISPLAYED_CORNER[orientation]).min() >= 255 - JPEG_TOLERANCE
    header = read_image_header(str(path))
    assert header.orientation == orientation and header.stored_size == STORED
    assert header.displayed_size == image.shape[:2]


@pytest.mark.parametrize("orientation, mask_drawn_on", [
    (6, "stored"), (8, "stored"), (3, "displayed"), (6, "displayed"), (8, "displayed"),
])
def test_mask_lines_up_with_the_displayed_image(tmp_path, orientation, mask_drawn_on):
    """Label 1 marks the white quadrant: on the stored pixels, or on the picture as displayed.
    (A mask drawn on the stored pixels of a 180-degree image has the displayed size too: see
    test_a_mask_that_fits_both_sizes_is_taken_as_displayed.)"""
    image_path, mask_path = tmp_path / "im.jpg", tmp_path / "im.png"
    _write_oriented_jpeg(image_path, orientation)
    if mask_drawn_on == "stored":
        Image.fromarray(_quadrant(1)).save(mask_path)
    else:  # turned as a viewer displays it, by Pillow's own exif_transpose
        Image.fromarray(_quadrant(1)).save(tmp_path / "tagged.png", exif=_exif(orientation))
        ImageOps.exif_transpose(Image.open(tmp_path / "tagged.png")).save(mask_path)

    image, labels = read_image_and_mask(str(image_path), str(mask_path), num_classes=2)
    assert labels.shape == image.shape[:2]
    white = image.min(axis=-1) > 128  # [H, W]
    np.testing.assert_array_equal(labels == 1, white)
    np.testing.assert_array_equal(
        read_mask_for_image(str(mask_path), image_path=str(image_path), num_classes=2), labels
    )


def test_a_mask_that_fits_both_sizes_is_taken_as_displayed(tmp_path):
    """The documented limit of the policy: sizes cannot tell a 180-degree turn, so the mask is
    used as it is (check_dataset lists such images and --visualize shows them)."""
    image_path, mask_path = tmp_path / "im.jpg", tmp_path / "im.png"
    _write_oriented_jpeg(image_path, 3)
    Image.fromarray(_quadrant(1)).save(mask_path)
    image, labels = read_image_and_mask(str(image_path), str(mask_path))
    np.testing.assert_array_equal(labels, _quadrant(1))
    assert _corner(image, "bottom-right").min() >= 255 - JPEG_TOLERANCE


def test_mask_of_another_size_names_both_files_and_sizes(tmp_path):
    image_path, mask_path = tmp_path / "im.jpg", tmp_path / "im.png"
    _write_oriented_jpeg(image_path, 6)
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(mask_path)
    with pytest.raises(ValueError, match=rf"image {image_path} is 48x32 .*stored 32x48, EXIF orientation 6.*"
                                         rf"mask {mask_path} is 40x40"):
        read_image_and_mask(str(image_path), str(mask_path))


def test_a_mask_keeps_its_stored_orientation_without_an_image(tmp_path):
    """Reading a mask alone (label conversion tools) never turns it; its own EXIF tag is ignored."""
    path = tmp_path / "mask.png"
    Image.fromarray(_quadrant(1)).save(path, exif=_exif(6))
    np.testing.assert_array_equal(read_label_mask(str(path)), _quadrant(1))


def test_png_orientation_from_the_header_matches_the_reader(tmp_path):
    path = tmp_path / "o6.png"
    Image.fromarray(_quadrant(255, channels=3)).save(path, exif=_exif(6))
    header = read_image_header(str(path))
    image = read_image(str(path))
    assert header.orientation == 6 and image.shape[:2] == header.displayed_size == (STORED[1], STORED[0])
    assert _corner(image, "top-right").min() == 255


def test_bgr_order_and_bad_format(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    assert tuple(read_image(str(tmp_path / "red.png"), image_format="BGR")[0, 0]) == (0, 0, 255)
    with pytest.raises(ValueError, match="image_format"):
        read_image(str(tmp_path / "red.png"), image_format="YUV")


def test_training_and_inference_reader_reads_16_bit(tmp_path):
    """The d2 mapper reads through the same reader in training and inference (was: an all-white
    image)."""
    pytest.importorskip("detectron2")
    from dinov3_m2f.d2.mapper import SemSegDatasetMapper

    path, mask = tmp_path / "gray16.png", tmp_path / "mask.png"
    Image.fromarray(_ramp16()).save(path)
    Image.fromarray(np.zeros(_ramp16().shape, dtype=np.uint8)).save(mask)
    record = {"file_name": str(path), "sem_seg_file_name": str(mask)}
    for is_train in (True, False):
        mapper = SemSegDatasetMapper(is_train=is_train, augmentations=[], num_classes=1)
        image = mapper(record)["image"].permute(1, 2, 0).numpy()  # [H, W, 3]
        np.testing.assert_array_equal(image, read_image(str(path)))
        assert image.min() == 0

"""SemSegDatasetMapper: outputs, augmentation consistency, mask checks."""
import os

import cv2
import numpy as np
import pytest
from helpers import REPO
from PIL import Image

pytest.importorskip("detectron2")

import detectron2.data.transforms as T  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
import torch  # noqa: E402

from dinov3_m2f.d2.mapper import SemSegDatasetMapper  # noqa: E402
from dinov3_m2f.data.bad_samples import TooManyBadSamplesError  # noqa: E402

SEM_SEG_CONFIG = os.path.join(REPO, "configs", "common", "data", "sem_seg.py")
NUM_CLASSES = 4
GRAY_STEP = 40  # image intensity = label * GRAY_STEP, so image and mask can be compared


def _sample(tmp_path, h=24, w=36, *, mask=None, stem="s"):
    """An image whose pixels encode the labels of its mask (labels vary along x and y)."""
    if mask is None:
        ys, xs = np.mgrid[0:h, 0:w]
        mask = ((xs // 6 + ys // 8) % NUM_CLASSES).astype(np.uint8)
        mask[:2, :3] = 255
    image = np.repeat((mask.astype(np.int64) * GRAY_STEP % 256).astype(np.uint8)[..., None], 3, axis=2)
    image_path, mask_path = str(tmp_path / f"{stem}.png"), str(tmp_path / f"{stem}_mask.png")
    cv2.imwrite(image_path, image)
    cv2.imwrite(mask_path, mask)
    return {"file_name": image_path, "sem_seg_file_name": mask_path}, image, mask


def _mapper(augmentations, **kwargs):
    return SemSegDatasetMapper(is_train=True, augmentations=augmentations,
                               num_classes=NUM_CLASSES, **kwargs)


def test_train_output_with_full_augmentations(tmp_path):
    record, _, _ = _sample(tmp_path)
    # the training augmentations of the base data config, at a small scale
    augs = LazyConfig.load(SEM_SEG_CONFIG).dataloader.train.mapper.augmentations
    augs[0].short_edge_length.update(base=24, min_ratio=0.5, max_ratio=1.5)
    augs[0].max_size = 200
    augs[1].update(crop_size=(16, 16), ignored_category=255)
    augs = instantiate(augs)
    mapper = _mapper(augs)
    for _ in range(5):
        out = mapper(record)
        # at most the crop (a short edge resized below 16 gives a smaller crop; nothing is padded)
        height, width = out["sem_seg"].shape
        assert height <= 16 and width <= 16 and out["image"].shape == (3, height, width)
        assert out["image"].dtype == torch.uint8 and out["sem_seg"].dtype == torch.int64
        assert set(out["sem_seg"].unique().tolist()) <= set(range(NUM_CLASSES)) | {255}
        assert (out["height"], out["width"]) == (24, 36)
        assert out["file_name"] == record["file_name"] and "sem_seg_file_name" not in out
    assert "image" not in record  # the input record is not modified


def test_flip_and_resize_keep_image_and_mask_aligned(tmp_path):
    record, image, mask = _sample(tmp_path)
    out = _mapper([T.RandomFlip(prob=1.0)])(record)
    assert torch.equal(out["sem_seg"], torch.from_numpy(mask[:, ::-1].astype(np.int64)))
    assert torch.equal(out["image"], torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1))

    out = _mapper([T.ResizeShortestEdge(48, 1000), T.RandomFlip(prob=1.0)])(record)
    sem_seg, gray = out["sem_seg"], out["image"][0].long()
    assert sem_seg.shape == (48, 72)
    valid = sem_seg != 255
    # nearest-resized mask agrees with the bilinear image away from label edges
    agree = (gray[valid] == sem_seg[valid] * GRAY_STEP).float().mean()
    assert agree > 0.6


def test_test_mode(tmp_path):
    record, _, _ = _sample(tmp_path)
    mapper = SemSegDatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(12, 1000)])
    out = mapper(record)
    assert out["image"].shape == (3, 12, 18) and out["image"].dtype == torch.uint8
    assert "sem_seg" not in out and "sem_seg_file_name" not in out
    assert (out["height"], out["width"]) == (24, 36)
    # test records without masks (e.g. LoveDA test) are fine
    assert mapper({"file_name": record["file_name"]})["image"].shape == (3, 12, 18)


def test_label_map_and_palette_masks(tmp_path):
    raw = np.array([[0, 1, 2], [3, 1, 0]], np.uint8)
    record, _, _ = _sample(tmp_path, mask=raw)
    out = _mapper([], label_map={0: 255, 1: 0, 2: 1, 3: 2})(record)
    assert out["sem_seg"].tolist() == [[255, 0, 1], [2, 0, 255]]

    palette_path = str(tmp_path / "palette.png")
    img = Image.fromarray(raw, mode="P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    img.save(palette_path)
    out = _mapper([])({**record, "sem_seg_file_name": palette_path})
    assert out["sem_seg"].tolist() == raw.tolist()  # palette indices, not colours


def _fails_naming(mapper, record, pattern):
    """In training, a sample that fails to read twice is skipped; with no skip allowed (the
    mapper's default) the run stops with the reader's error, which names the file."""
    mapper.skip_bad_samples.skipped.clear()
    with pytest.raises(TooManyBadSamplesError, match=pattern):
        mapper(record)


def test_bad_masks_name_the_file(tmp_path):
    record, _, mask = _sample(tmp_path)
    mapper = _mapper([])
    mapper.skip_bad_samples.retry_delay_s = 0

    rgb_path = str(tmp_path / "rgb_mask.png")
    cv2.imwrite(rgb_path, np.repeat(mask[..., None], 3, axis=2))
    _fails_naming(mapper, {**record, "sem_seg_file_name": rgb_path},
                  f"{rgb_path}.*3 channels.*single-channel label PNG")

    small_path = str(tmp_path / "small_mask.png")
    cv2.imwrite(small_path, mask[:10])
    _fails_naming(mapper, {**record, "sem_seg_file_name": small_path}, f"{record['file_name']}.*{small_path}")

    bad_path = str(tmp_path / "bad_values.png")
    bad = mask.copy()
    bad[0, 0], bad[1, 1] = 7, 200
    cv2.imwrite(bad_path, bad)
    _fails_naming(mapper, {**record, "sem_seg_file_name": bad_path}, rf"{bad_path}.*\[7, 200\]")

    broken_path = str(tmp_path / "broken.png")
    with open(broken_path, "wb") as f:
        f.write(b"not a png")
    _fails_naming(mapper, {**record, "sem_seg_file_name": broken_path}, f"cannot read mask file {broken_path}")

    _fails_naming(mapper, {**record, "sem_seg_file_name": str(tmp_path / "missing.png")}, "missing.png")

    with pytest.raises(ValueError, match=f"{record['file_name']}.*no 'sem_seg_file_name'"):
        mapper({"file_name": record["file_name"]})

    label_mapper = _mapper([], label_map={0: 0})
    label_mapper.skip_bad_samples.retry_delay_s = 0
    _fails_naming(label_mapper, record, f"{record['sem_seg_file_name']}.*label_map")

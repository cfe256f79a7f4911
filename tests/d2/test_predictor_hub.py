"""SemSegPredictor (Python inference API) and the torch.hub entry points, against the raw label
PNG of tools/demo.py, on a checkpoint of the tiny synthetic config."""
import glob
import os

import pytest

pytest.importorskip("detectron2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dinov3_m2f.d2.config import load_config  # noqa: E402
from dinov3_m2f.d2.predictor import SemSegPredictor  # noqa: E402
from dinov3_m2f.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from helpers import load_tool  # noqa: E402

from helpers import REPO  # noqa: E402
CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")


@pytest.fixture(scope="module")
def val_images(synthetic_env):
    root = os.path.join(synthetic_env["DETECTRON2_DATASETS"], "dinov3_m2f_synthetic")
    return sorted(glob.glob(os.path.join(root, "val", "images", "*.png")))[:2]


@pytest.fixture(scope="module")
def predictor(tiny_synthetic_checkpoint):
    return SemSegPredictor.from_config(
        CONFIG, checkpoint=tiny_synthetic_checkpoint, device="cpu"
    )


def test_predictor_returns_labels_and_probs_at_image_size(predictor, val_images):
    assert predictor.class_names == list(SYNTHETIC_CLASSES)
    assert not predictor.model.training
    image = np.asarray(Image.open(val_images[0]).convert("RGB"))
    labels, probs = predictor(image, return_probs=True)
    assert labels.shape == image.shape[:2] and labels.dtype == np.int64
    assert probs.shape == (len(SYNTHETIC_CLASSES), *image.shape[:2]) and probs.dtype == np.float32
    np.testing.assert_array_equal(labels, probs.argmax(axis=0))
    # A path gives the same result as the decoded array.
    np.testing.assert_array_equal(predictor(val_images[0]), labels)


def test_predictor_loads_the_checkpoint_weights(predictor, tiny_synthetic_checkpoint):
    saved = torch.load(tiny_synthetic_checkpoint, weights_only=True)["model"]
    key = "sem_seg_head.predictor.query_feat.weight"
    assert torch.equal(predictor.model.state_dict()[key], saved[key])


def test_api_hub_and_demo_labels_are_identical(predictor, tiny_synthetic_checkpoint, val_images,
                                               tmp_path):
    hub_predictor = torch.hub.load(
        REPO, "m2f_synthetic_tiny", source="local", checkpoint=tiny_synthetic_checkpoint,
        device="cpu",
    )
    assert isinstance(hub_predictor, SemSegPredictor)
    out = tmp_path / "demo"
    code = load_tool("demo").main([*val_images, "--config-file", CONFIG, "--checkpoint",
                                   tiny_synthetic_checkpoint, "--output", str(out),
                                   "--device", "cpu"])
    assert code == 0
    for path in val_images:
        stem = os.path.splitext(os.path.basename(path))[0]
        demo_labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert demo_labels.dtype == np.uint8
        np.testing.assert_array_equal(predictor(path), demo_labels)
        np.testing.assert_array_equal(hub_predictor(path), demo_labels)
        assert (out / f"{stem}_overlay.png").is_file()


def test_test_mode_can_be_overridden(tiny_synthetic_checkpoint, val_images):
    # tools/demo.py turns its test-mode options into the config overrides
    demo = load_tool("demo")
    args = demo.parse_args(["x.png", "--config-file", CONFIG, "--checkpoint", "c.pth",
                            "--output", "out", "--test-mode", "slide", "--crop-size", "64", "64",
                            "--stride", "64", "64"])
    overrides = demo.inference_overrides(args)
    assert overrides == ["model.test_mode=slide", "model.slide_crop_size=[64, 64]",
                         "model.slide_stride=[64, 64]"]
    slide = SemSegPredictor.from_config(
        CONFIG, checkpoint=tiny_synthetic_checkpoint, device="cpu", overrides=overrides
    )
    assert slide.model.test_mode == "slide" and slide.model.slide_crop_size == (64, 64)
    assert slide(val_images[0]).shape == (128, 128)


def test_bad_inputs_raise_clear_errors(predictor, tiny_synthetic_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="RGB uint8"):
        predictor(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match="path or a numpy array"):
        predictor(torch.zeros(8, 8, 3))
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        predictor(str(corrupt))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        SemSegPredictor.from_config(CONFIG, checkpoint=str(tmp_path / "missing.pth"))
    # A trainable-only checkpoint cannot restore a ViT that has neither weights nor a seed.
    with pytest.raises(ValueError, match="init_seed"):
        SemSegPredictor.from_config(CONFIG, checkpoint=tiny_synthetic_checkpoint,
                                    overrides=["model.backbone.init_seed=null"])


def test_load_config_rejects_unknown_override_keys():
    cfg = load_config(CONFIG, overrides=["model.slide_crop_size=[64,64]", "train.max_iter=3"])
    assert cfg.train.max_iter == 3 and list(cfg.model.slide_crop_size) == [64, 64]
    with pytest.raises(KeyError, match="train.max_iterz"):
        load_config(CONFIG, overrides=["train.max_iterz=3"])
    with pytest.raises(KeyError, match="model.backbone.weightz"):
        load_config(CONFIG, overrides=["model.backbone.weightz=x.pth"])

"""Export parity at a realistic size: a ViT-S-sized random model (DINOv3 ViT-S/16 + adapter +
the original Mask2Former head, 150 classes) at 512x512, torch.export and ONNX against PyTorch.

The slowest deploy check (about 1 GB of memory; a few minutes on 2 cores): the ONNX conversion
of the full-size graph dominates.
"""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from detectron2.config import instantiate  # noqa: E402

from dinov3_m2f.d2.config import load_config  # noqa: E402
from dinov3_m2f.deploy.export import example_image, export_onnx, export_program, load_program, save_program  # noqa: E402
from dinov3_m2f.deploy.metadata import make_metadata  # noqa: E402
from dinov3_m2f.deploy.module import SemSegExportModule  # noqa: E402
from dinov3_m2f.deploy.onnx_runner import OnnxSemSegmenter  # noqa: E402
from dinov3_m2f.deploy.parity import compare_probs  # noqa: E402
from dinov3_m2f.layers import _extension  # noqa: E402

pytestmark = pytest.mark.skipif(not _extension.is_available(), reason="exporting needs the compiled op")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "ade20k", "m2f_vitl16_lvd1689m_512.py")
VITS_OVERRIDES = [
    "model.backbone.preset=vits16",
    "model.backbone.weights=null",
    "model.backbone.init_seed=0",
    "model.sem_seg_head.input_shape.channels=384",
]
SIZE = 512


def test_vits_sized_random_model_exports_match_pytorch_at_512(tmp_path):
    torch.manual_seed(0)
    model = instantiate(load_config(CONFIG, overrides=VITS_OVERRIDES).model).eval()
    module = SemSegExportModule.from_model(model)
    assert 40e6 < sum(p.numel() for p in module.parameters()) < 50e6  # ViT-S 21.6M + adapter + head
    image = example_image(height=SIZE, width=SIZE)
    with torch.inference_mode():
        reference = module(image)[0].numpy()
    assert np.isfinite(reference).all() and reference.shape == (1, model.num_classes, SIZE, SIZE)
    metadata = make_metadata(
        class_names=[f"class{i}" for i in range(model.num_classes)], class_colors=None,
        input_dtype="uint8", input_size=(SIZE, SIZE), dynamic=False,
        pixel_mean=module.pixel_mean.flatten().tolist(), pixel_std=module.pixel_std.flatten().tolist(),
        size_divisibility=module.size_divisibility, config_file=CONFIG, checkpoint="(random)",
    )

    program_path = str(tmp_path / "vits.pt2")
    save_program(export_program(module, image, dynamic=False), program_path, metadata=metadata)
    program = load_program(program_path)[0].module()
    with torch.inference_mode():
        parity = compare_probs(reference, program(image)[0].numpy())
    assert parity.ok, parity

    onnx_path = str(tmp_path / "vits.onnx")
    export_onnx(module, onnx_path, example=image, dynamic=False, metadata=metadata)
    parity = compare_probs(reference, OnnxSemSegmenter(onnx_path).run(image.numpy()))
    assert parity.ok, parity

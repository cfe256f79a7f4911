"""Deployment: tools/export_model.py (torch.export .pt2 and ONNX), the onnxruntime runner and
tools/infer_onnx.py, checked against the PyTorch / Detectron2 model on the tiny synthetic model,
and both export formats on a ViT-S-sized random model (DINOv3 ViT-S/16 + adapter + the original
Mask2Former head, 150 classes) at 512x512.

Acceptance (dinov3_m2f.deploy.parity): probabilities max-abs <= 1e-4, labels >= 99.9 % identical.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from detectron2.config import instantiate  # noqa: E402
from PIL import Image  # noqa: E402

from dinov3_m2f.d2.config import load_config  # noqa: E402
from dinov3_m2f.d2.predictor import SemSegPredictor  # noqa: E402
from dinov3_m2f.data.outputs import LABELS_SUFFIX, OVERLAY_SUFFIX  # noqa: E402
from dinov3_m2f.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from dinov3_m2f.deploy.export import (example_image, export_onnx, export_program, load_program,  # noqa: E402
                                       load_program_runner, save_program)
from dinov3_m2f.deploy.metadata import make_metadata  # noqa: E402
from dinov3_m2f.deploy.module import SemSegExportModule  # noqa: E402
from dinov3_m2f.deploy.onnx_runner import OnnxSemSegmenter  # noqa: E402
from dinov3_m2f.deploy.parity import MIN_LABEL_AGREEMENT, compare_probs  # noqa: E402
from dinov3_m2f.layers import _extension, ms_deform_attn, ms_deform_attn_pytorch  # noqa: E402
from helpers import load_tool  # noqa: E402

pytestmark = pytest.mark.skipif(not _extension.is_available(), reason="exporting needs the compiled op")

from helpers import REPO  # noqa: E402
CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
ADE20K_CONFIG = os.path.join(REPO, "configs", "ade20k", "m2f_vitl16_lvd1689m_512.py")
SIZE = 128  # the synthetic images are 128x128
NUM_VAL_IMAGES = 6
# Sliding windows for the slide-mode checks: two overlapping windows per axis on a 128 image.
CROP, STRIDE = 96, 64
# Modules a deployment process must not need (the ONNX runner also runs without torch).
NOT_NEEDED_BY_THE_RUNNER = ("torch", "detectron2", "dinov3_m2f._C")


def _export(tool, checkpoint, output, *options):
    args = ["--config-file", CONFIG, "--checkpoint", checkpoint, "--output", str(output), *options]
    assert tool.main(args) == 0
    return str(output)


@pytest.fixture(scope="module")
def exports(tiny_synthetic_checkpoint, synthetic_env, tmp_path_factory):
    """The tiny checkpoint exported four ways: {(format, dynamic): path}."""
    tool = load_tool("export_model")
    folder = tmp_path_factory.mktemp("exports")
    paths = {}
    for fmt, ext in (("onnx", "onnx"), ("torch_export", "pt2")):
        paths[fmt, False] = _export(tool, tiny_synthetic_checkpoint, folder / f"static.{ext}",
                                    "--format", fmt, "--input-size", str(SIZE), str(SIZE))
        paths[fmt, True] = _export(tool, tiny_synthetic_checkpoint, folder / f"dynamic.{ext}",
                                   "--format", fmt, "--input-size", str(SIZE), str(SIZE), "--dynamic")
    return paths


@pytest.fixture(scope="module")
def predictor(tiny_synthetic_checkpoint, synthetic_env):
    return SemSegPredictor.from_config(CONFIG, checkpoint=tiny_synthetic_checkpoint, device="cpu",
                                       autocast="none")


@pytest.fixture(scope="module")
def val_images(synthetic_env, tmp_path_factory):
    """The first synthetic validation images, copied to a folder of their own."""
    root = os.path.join(synthetic_env["DETECTRON2_DATASETS"], "dinov3_m2f_synthetic", "val", "images")
    folder = tmp_path_factory.mktemp("val_images")
    for path in sorted(glob.glob(os.path.join(root, "*.png")))[:NUM_VAL_IMAGES]:
        shutil.copy(path, folder)
    return sorted(str(p) for p in folder.iterdir())


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _d2_probs(predictor, images):
    """The Detectron2 model's probabilities [N, C, H, W] (whole-image test mode)."""
    return np.stack([predictor(image, return_probs=True)[1] for image in images])


def _assert_parity(reference, candidate):
    parity = compare_probs(reference, candidate)
    assert parity.ok, parity
    return parity


# ---------------------------------------------------------------- the op's ONNX lowering


class _DeformAttn(torch.nn.Module):
    def forward(self, value, shapes, starts, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights, impl="compiled")


@pytest.mark.parametrize("opset", [17, 18, 20])  # 20 renamed GridSample's "bilinear" to "linear"
def test_onnx_lowering_of_the_compiled_op_matches_the_reference(tmp_path, opset):
    import onnx
    import onnxruntime as ort

    from dinov3_m2f.deploy.onnx_ops import onnx_translation_table

    generator = torch.Generator().manual_seed(0)
    B, M, C, L, P, Q = 2, 4, 8, 3, 4, 7
    shapes = torch.tensor([[5, 6], [3, 4], [2, 2]])
    starts = torch.tensor([0, 30, 42])
    value = torch.randn(B, 46, M, C, generator=generator)
    # some points fall outside [0, 1]: zero padding
    locations = torch.rand(B, Q, M, L, P, 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(B, Q, M, L, P, generator=generator)
    inputs = (value, shapes, starts, locations, weights)
    path = str(tmp_path / "op.onnx")
    torch.onnx.export(_DeformAttn().eval(), inputs, path, dynamo=True, opset_version=opset, verbose=False,
                      custom_translation_table=onnx_translation_table())
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (output,) = session.run(None, dict(zip(names, (t.numpy() for t in inputs))))
    reference = ms_deform_attn_pytorch(*inputs).numpy()
    assert np.abs(output - reference).max() < 1e-5
    model = onnx.load(path)
    assert "GridSample" in {node.op_type for node in model.graph.node}
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]


# ---------------------------------------------------------------- exported model vs PyTorch


def test_static_onnx_matches_the_d2_model_on_validation_images(exports, predictor, val_images):
    segmenter = OnnxSemSegmenter(exports["onnx", False])
    assert segmenter.class_names == list(SYNTHETIC_CLASSES) and segmenter.fixed_size == (SIZE, SIZE)
    images = [_read(p) for p in val_images]
    onnx_probs = np.stack([segmenter.predict(image) for image in images])
    _assert_parity(_d2_probs(predictor, images), onnx_probs)


def test_static_program_matches_the_d2_model_and_keeps_the_custom_op(exports, predictor, val_images):
    program, metadata = load_program(exports["torch_export", False])
    targets = {node.target for node in program.graph.nodes}
    assert torch.ops.dinov3_m2f.ms_deform_attn_forward.default in targets
    assert "grid_sampler_2d" not in str(targets)
    assert metadata["class_names"] == list(SYNTHETIC_CLASSES) and not metadata["dynamic"]
    images = [_read(p) for p in val_images]
    run = program.module()
    with torch.inference_mode():
        probs = np.stack([run(torch.from_numpy(image.transpose(2, 0, 1)[None].copy()))[0][0].numpy()
                          for image in images])
    _assert_parity(_d2_probs(predictor, images), probs)


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_dynamic_exports_take_any_batch_and_size(exports, predictor, fmt):
    """Batch 1 and 3; sizes that are and are not multiples of 32 (padded inside the model), down
    to the smallest a dynamic export takes (33: the stride-32 map needs two cells)."""
    path = exports[fmt, True]
    if fmt == "onnx":
        run = OnnxSemSegmenter(path).run
    else:
        module = load_program_runner(path)

        def run(images):
            with torch.inference_mode():
                return module(torch.from_numpy(images))[0].numpy()
    for batch, height, width in ((1, 128, 128), (3, 96, 160), (1, 100, 75), (1, 33, 40)):
        images = example_image(height=height, width=width, batch=batch, seed=batch).numpy()
        reference = _d2_probs(predictor, [np.ascontiguousarray(i.transpose(1, 2, 0)) for i in images])
        _assert_parity(reference, run(images))
    suffix = "onnx" if fmt == "onnx" else "pt2"
    for height, width in ((32, 40), (40, 20)):
        with pytest.raises(ValueError, match=f"dynamic.{suffix}: H and W must be at least 33"):
            run(example_image(height=height, width=width).numpy())


def test_onnx_run_refuses_other_value_ranges_unless_asked_to_scale(exports):
    segmenter = OnnxSemSegmenter(exports["onnx", True])
    image = example_image(height=64, width=64, seed=3).numpy()  # uint8
    expected = segmenter.run(image)
    np.testing.assert_array_equal(segmenter.run(image.astype(np.float32)), expected)  # 0..255 floats
    with pytest.raises(ValueError, match="0..255.*look like 0..1.*input_range"):
        segmenter.run(image.astype(np.float32) / 255.0)
    with pytest.raises(ValueError, match="0..255.*16-bit"):
        segmenter.run(image.astype(np.uint16) * 257)
    np.testing.assert_array_equal(segmenter.run(image.astype(np.float32) / 255.0, input_range=(0, 1)), expected)
    np.testing.assert_array_equal(segmenter.run(image.astype(np.uint16) * 257, input_range=(0, 65535)), expected)


@pytest.mark.parametrize("fmt, ext", [("onnx", "onnx"), ("torch_export", "pt2")])
def test_float32_input_exports_match_the_d2_model(tiny_synthetic_checkpoint, synthetic_env, predictor,
                                                  val_images, tmp_path, fmt, ext):
    """``--input-dtype float32``: the model takes float RGB in 0..255; its labels are the argmax."""
    path = _export(load_tool("export_model"), tiny_synthetic_checkpoint, tmp_path / f"float.{ext}",
                   "--format", fmt, "--input-size", str(SIZE), str(SIZE), "--input-dtype", "float32")
    images = [_read(p) for p in val_images]
    if fmt == "onnx":
        segmenter = OnnxSemSegmenter(path)
        assert segmenter.input_dtype == np.float32
        run = lambda image: segmenter.session.run(None, {segmenter.input_name: image})  # noqa: E731
    else:
        module = load_program(path)[0].module()
        run = lambda image: [t.numpy() for t in module(torch.from_numpy(image))]  # noqa: E731
    outputs = []
    with torch.inference_mode():
        for image in images:  # a static export takes batch 1
            single = image.transpose(2, 0, 1)[None].astype(np.float32)
            outputs.append(run(single))
            if fmt == "onnx":  # the runner casts uint8 images to the model's float input
                np.testing.assert_array_equal(segmenter.run(single.astype(np.uint8)), outputs[-1][0])
    probs, labels = (np.concatenate(parts) for parts in zip(*outputs))
    np.testing.assert_array_equal(labels, probs.argmax(1))
    _assert_parity(_d2_probs(predictor, images), probs)


def test_program_reloads_in_a_process_that_imports_only_torch_and_dinov3_m2f(exports, tmp_path, predictor):
    image = example_image(height=SIZE, width=SIZE, seed=3)
    np.save(tmp_path / "image.npy", image.numpy())
    script = f"""
import sys
sys.modules["detectron2"] = None  # importing it would fail: nothing may need it
import numpy as np
import torch
import dinov3_m2f  # registers torch.ops.dinov3_m2f
program = torch.export.load({exports["torch_export", False]!r})
with torch.inference_mode():
    probs, labels = program.module()(torch.from_numpy(np.load({str(tmp_path / "image.npy")!r})))
np.save({str(tmp_path / "probs.npy")!r}, probs.numpy())
print(sorted(m for m, mod in sys.modules.items()
             if mod is not None and m.split(".")[0] in ("detectron2", "fvcore", "onnx", "onnxscript")))
"""
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "projects"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    reference = _d2_probs(predictor, [image[0].permute(1, 2, 0).numpy()])
    _assert_parity(reference, np.load(tmp_path / "probs.npy"))


def test_export_refuses_to_overwrite(tiny_synthetic_checkpoint, tmp_path):
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="model.onnx"):
        load_tool("export_model").main(["--config-file", CONFIG, "--checkpoint", tiny_synthetic_checkpoint,
                                        "--format", "onnx", "--input-size", "64", "64", "--output", str(existing)])
    assert existing.read_bytes() == b"keep me"


def test_export_benchmark_prints_a_row_for_the_benchmarks_page(tiny_synthetic_checkpoint, synthetic_env,
                                                               tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        _export(load_tool("export_model"), tiny_synthetic_checkpoint, tmp_path / "model.onnx", "--format",
                "onnx", "--input-size", "64", "64", "--benchmark", "2", "--threads", "1")
    finally:
        torch.set_num_threads(threads)  # --threads sets it for the whole (test) process
    header, separator, row = capsys.readouterr().out.strip().splitlines()[-3:]
    def split(line):
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    cells = dict(zip(split(header), split(row)))
    assert separator.startswith("|---|") and cells["threads"] == "1" and cells["input"] == "64x64 uint8"
    assert cells["exported runtime"].startswith("onnxruntime") and cells["config"] == os.path.basename(CONFIG)
    assert float(cells["PyTorch img/s"]) > 0 and float(cells["exported img/s"]) > 0
    assert re.fullmatch(r"[\d.]+ [\d.]+ [\d.]+ / [\d.]+ [\d.]+ [\d.]+", cells["load avg before / after"])
    assert cells["PyTorch / exported time"].endswith("x") and cells["OMP_WAIT_POLICY"]


# ---------------------------------------------------------------- the runner and infer_onnx


def test_static_model_rejects_other_sizes_with_a_clear_error(exports):
    segmenter = OnnxSemSegmenter(exports["onnx", False])
    with pytest.raises(ValueError, match="--dynamic"):
        segmenter.predict(np.zeros((96, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="crop size"):
        segmenter.predict(np.zeros((SIZE, SIZE, 3), np.uint8), crop_size=(CROP, CROP), stride=(STRIDE, STRIDE))


def _run_demo(checkpoint, images, output, *mode):
    args = [images, "--config-file", CONFIG, "--checkpoint", checkpoint, "--output", str(output),
            "--device", "cpu", *mode]
    assert load_tool("demo").main(args) == 0


def _run_infer_onnx_without_torch(model, images, output, *mode):
    """tools/infer_onnx.py in a process where torch, detectron2 and our extension cannot load."""
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in NOT_NEEDED_BY_THE_RUNNER)
    argv = ["infer_onnx", images, "--model", model, "--output", str(output), *mode]
    script = (f"import runpy, sys; {blocked}; sys.argv = {argv!r}; "
              f"runpy.run_path({os.path.join(REPO, 'tools', 'infer_onnx.py')!r}, run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "projects"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _png(path):
    return np.asarray(Image.open(path))


def _label_agreement(folder_a, folder_b):
    files = sorted(glob.glob(os.path.join(folder_a, f"*{LABELS_SUFFIX}")))
    assert files and sorted(os.listdir(folder_a)) == sorted(os.listdir(folder_b))
    same = total = 0
    for path in files:
        a = _png(path)
        b = _png(os.path.join(folder_b, os.path.basename(path)))
        same += int((a == b).sum())
        total += a.size
    return same / total


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_infer_onnx_writes_the_labels_of_demo(exports, tiny_synthetic_checkpoint, val_images, tmp_path, mode):
    images = os.path.dirname(val_images[0])
    window = ["--crop-size", str(CROP), str(CROP), "--stride", str(STRIDE), str(STRIDE)]
    demo_mode = ["--test-mode", "slide", *window] if mode == "slide" else []
    model = exports["onnx", mode == "slide"]  # windows of 96 need the dynamic model
    _run_demo(tiny_synthetic_checkpoint, images, tmp_path / "demo", *demo_mode)
    _run_infer_onnx_without_torch(model, images, tmp_path / "onnx", *(window if mode == "slide" else []))
    assert _label_agreement(tmp_path / "demo", tmp_path / "onnx") >= MIN_LABEL_AGREEMENT
    # the same drawing, class names and colours: identical overlays wherever the labels agree
    compared = 0
    for labels_path in sorted((tmp_path / "demo").glob(f"*{LABELS_SUFFIX}")):
        if np.array_equal(_png(labels_path), _png(tmp_path / "onnx" / labels_path.name)):
            overlay = labels_path.name.replace(LABELS_SUFFIX, OVERLAY_SUFFIX)
            assert np.array_equal(_png(tmp_path / "demo" / overlay), _png(tmp_path / "onnx" / overlay))
            compared += 1
    assert compared > 0

def test_infer_onnx_skips_unreadable_images(exports, val_images, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(open(val_images[0], "rb").read())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    infer = load_tool("infer_onnx")
    assert infer.main([str(folder), "--model", exports["onnx", False], "--output", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_labels.png", "good_overlay.png"]
    assert any("corrupt.png" in r.getMessage() and r.getMessage().startswith("Skipping") for r in caplog.records)
    assert infer.main([str(folder / "corrupt.png"), "--model", exports["onnx", False],
                       "--output", str(tmp_path / "out2")]) == 1


# ---------------------------------------------------------------- ViT-S at 512

VITS_OVERRIDES = [
    "model.backbone.preset=vits16",
    "model.backbone.weights=null",
    "model.backbone.init_seed=0",
    "model.sem_seg_head.input_shape.channels=384",
    *load_tool("export_model").FLOAT32_OVERRIDES,  # the ADE20K config's ViT is bfloat16
]
VITS_SIZE = 512


def test_vits_sized_random_model_exports_match_pytorch_at_512(tmp_path):
    """The same parity at a realistic size (the slowest deploy check, about a minute on 2 cores:
    the ONNX conversion of the full-size graph dominates)."""
    torch.manual_seed(0)
    model = instantiate(load_config(ADE20K_CONFIG, overrides=VITS_OVERRIDES).model).eval()
    module = SemSegExportModule.from_model(model)
    assert 40e6 < sum(p.numel() for p in module.parameters()) < 50e6  # ViT-S 21.6M + adapter + head
    image = example_image(height=VITS_SIZE, width=VITS_SIZE)
    with torch.inference_mode():
        reference = module(image)[0].numpy()
    assert np.isfinite(reference).all() and reference.shape == (1, model.num_classes, VITS_SIZE, VITS_SIZE)
    metadata = make_metadata(
        class_names=[f"class{i}" for i in range(model.num_classes)], class_colors=None,
        input_dtype="uint8", input_size=(VITS_SIZE, VITS_SIZE), dynamic=False,
        pixel_mean=module.pixel_mean.flatten().tolist(), pixel_std=module.pixel_std.flatten().tolist(),
        size_divisibility=module.size_divisibility, config_file=ADE20K_CONFIG, checkpoint="(random)",
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

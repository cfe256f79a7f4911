"""tools/demo.py (skips unreadable images, exit codes), tools/analyze_model.py (parameter totals,
FLOP handle of the deformable attention op) and dev/benchmark.py config (a CPU table row)."""
import glob
import logging
import os
import re
import shutil

import pytest

pytest.importorskip("detectron2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from dinov3_m2f.d2.config import load_config  # noqa: E402
from dinov3_m2f.data import outputs as demo_outputs  # noqa: E402
from dinov3_m2f.data.files import collect_image_files  # noqa: E402
from dinov3_m2f.layers import _extension, ms_deform_attn  # noqa: E402
from helpers import DEV, REPO, load_tool  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")


@pytest.fixture(scope="module")
def demo():
    return load_tool("demo")


@pytest.fixture
def image_folder(synthetic_env, tmp_path):
    """Two synthetic val images and one corrupt PNG."""
    root = os.path.join(synthetic_env["DETECTRON2_DATASETS"], "dinov3_m2f_synthetic")
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(glob.glob(os.path.join(root, "val", "images", "*.png")))[:2]:
        shutil.copy(path, folder)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


def _demo_args(checkpoint, output, *inputs):
    return [*inputs, "--config-file", CONFIG, "--checkpoint", checkpoint, "--output",
            str(output), "--device", "cpu"]


def test_demo_skips_a_corrupt_image_and_writes_the_others(
    demo, tiny_synthetic_checkpoint, image_folder, tmp_path, caplog
):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code = demo.main(_demo_args(tiny_synthetic_checkpoint, out, str(image_folder)))
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("corrupt.png" in m and m.startswith("Skipping") for m in warnings)
    assert any("Skipped 1 unreadable" in m and "corrupt.png" in m for m in warnings)
    good = sorted(p.stem for p in image_folder.glob("*.png") if p.name != "corrupt.png")
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"{s}_labels.png" for s in good] + [f"{s}_overlay.png" for s in good])
    labels = np.asarray(Image.open(out / f"{good[0]}_labels.png"))
    overlay = np.asarray(Image.open(out / f"{good[0]}_overlay.png"))
    assert labels.shape == (128, 128) and labels.max() < 7
    # the overlay lines up with the image; the legend of the classes present is on the right
    assert overlay.shape[0] == 128 and overlay.shape[1] > 128 and overlay.shape[2] == 3


def test_demo_fails_when_no_image_is_readable(demo, tiny_synthetic_checkpoint, image_folder,
                                              tmp_path, caplog):
    corrupt = str(image_folder / "corrupt.png")
    with caplog.at_level(logging.WARNING):
        code = demo.main(_demo_args(tiny_synthetic_checkpoint, tmp_path / "out", corrupt))
    assert code != 0
    assert any("corrupt.png" in r.getMessage() for r in caplog.records)


def test_demo_refuses_a_too_large_image_before_decoding_it(demo, tiny_synthetic_checkpoint, image_folder,
                                                           tmp_path, caplog, monkeypatch):
    """Whole-image mode: an image over 2048 x 2048 is skipped with a pointer to slide mode, read
    only as far as its header; the other images are segmented."""
    big = image_folder / "big.png"
    Image.new("RGB", (2049, 2048)).save(big)
    (image_folder / "corrupt.png").unlink()
    decoded = []
    real_read_image = demo_outputs.read_image
    monkeypatch.setattr(demo_outputs, "read_image",
                        lambda path, **kw: decoded.append(path) or real_read_image(path, **kw))
    with caplog.at_level(logging.WARNING):
        code = demo.main(_demo_args(tiny_synthetic_checkpoint, tmp_path / "out", str(image_folder)))
    assert code == 0
    assert str(big) not in decoded and len(decoded) == 2
    message = next(r.getMessage() for r in caplog.records if "big.png" in r.getMessage())
    assert "ImageTooLargeError" in message and "2048x2049" in message and "--test-mode slide" in message
    assert len(list((tmp_path / "out").glob("*_labels.png"))) == 2


def test_demo_input_collection(image_folder, tmp_path):
    files = collect_image_files([str(image_folder / "*.png"), str(image_folder)])
    assert len(files) == 3 and files == sorted(files)  # the folder repeats the glob: no duplicates
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        collect_image_files([str(image_folder / "nothing_here*.png")])
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(image_folder / "corrupt.png", other)
    with pytest.raises(ValueError, match="corrupt"):
        collect_image_files([str(image_folder), str(other)])


def test_analyze_model_totals_match_the_frozen_vit(capsys):
    analyze = load_tool("analyze_model")
    assert analyze.main(["--config-file", CONFIG, "--input-size", "64", "64"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"total ([\d,]+) = trainable ([\d,]+) \+ frozen ([\d,]+)", out)
    total, trainable, frozen = (int(g.replace(",", "")) for g in match.groups())
    assert trainable + frozen == total
    model = instantiate(load_config(CONFIG).model)
    assert frozen == sum(p.numel() for p in model.backbone.vit.parameters())
    assert total == sum(p.numel() for p in model.parameters())
    flop_section = out.split("## Inference FLOPs")[1]
    gflops = float(re.search(r"\| \(model total\) \| ([\d.]+) \|", flop_section).group(1))
    assert gflops > 0
    if _extension.is_available():
        assert "MSDeformAttn" not in flop_section and "scaled_dot_product" not in flop_section


class _DeformAttnCall(nn.Module):
    def forward(self, value, shapes, starts, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights, impl="compiled")


@pytest.mark.skipif(not _extension.is_available(), reason="compiled op not built")
def test_ms_deform_attn_flop_formula():
    from fvcore.nn import FlopCountAnalysis

    analyze = load_tool("analyze_model")
    B, M, C, L, P, Q = 2, 4, 8, 2, 3, 5
    shapes = torch.tensor([[4, 4], [2, 2]])
    starts = torch.tensor([0, 16])
    value = torch.randn(B, 20, M, C)
    locations = torch.rand(B, Q, M, L, P, 2)
    weights = torch.rand(B, Q, M, L, P)
    flops = FlopCountAnalysis(_DeformAttnCall(), (value, shapes, starts, locations, weights))
    flops.set_op_handle(**{op: analyze.ms_deform_attn_flop_jit for op in analyze.MS_DEFORM_ATTN_OPS})
    assert flops.total() == B * Q * M * L * P * C * 5
    assert not flops.unsupported_ops()


def test_benchmark_prints_a_table_row_on_cpu(capsys):
    benchmark = load_tool("benchmark", folder=DEV)
    threads = torch.get_num_threads()
    try:
        code = benchmark.main([
            "config", "--config-file", CONFIG, "--device", "cpu", "--threads", "1", "--iters", "2",
            "--warmup", "1", "--batch-size", "1", "--input-size", "64", "64",
            "--date", "2026-11-21", "--opts", "model.criterion.num_points=256",
        ])
    finally:
        torch.set_num_threads(threads)  # --threads changes the whole process
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, row = lines[-3].split("|")[1:-1], lines[-1].split("|")[1:-1]
    assert len(header) == len(row) == 13
    cells = dict(zip((h.strip() for h in header), (c.strip() for c in row)))
    assert cells["date"] == "2026-11-21" and cells["torch"] == torch.__version__
    assert cells["device"] == "cpu" and cells["input"] == "64x64" and cells["threads"] == "1"
    assert float(cells["train ms/iter"]) > 0 and float(cells["infer img/s"]) > 0
    assert cells["train peak MiB"].endswith("(CPU peak RSS growth)")

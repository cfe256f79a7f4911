"""dev/gpu_check.sh --dry-run: every step runs on the CPU, in an environment without detectron2
(as on the bare GPU image), and the results file holds the expected rows."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO  # noqa: E402
SCRIPT = os.path.join(REPO, "dev", "gpu_check.sh")
# Packages the GPU image lacks and the core path of the check must not import. fvcore (with
# iopath, yacs, termcolor) is a dependency of the core (weight init): it travels as wheels.
MISSING_ON_GPU_IMAGE = ["detectron2", "omegaconf", "hydra", "pycocotools"]
_RUN_TIMEOUT_S = 900
STEPS = ["build", "tests", "op-512", "model-vitl", "model-7b", "op-1024", "compile"]

# Makes every Python process of the check fail to import MISSING_ON_GPU_IMAGE.
_BLOCKER = """
import sys

BLOCKED = {blocked!r}


class _BlockMissingOnGpuImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _BlockMissingOnGpuImage())
"""

# Stands in for the original Deformable-DETR extension (built outside the repository on a GPU):
# the same two functions, computed with our PyTorch reference.
_FAKE_BASELINE = """
import torch
from dinov3_m2f.layers import ms_deform_attn_pytorch


def ms_deform_attn_forward(value, shapes, starts, locations, weights, im2col_step):
    return ms_deform_attn_pytorch(value, shapes, starts, locations, weights)


def ms_deform_attn_backward(value, shapes, starts, locations, weights, grad_output, im2col_step):
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    with torch.enable_grad():
        out = ms_deform_attn_pytorch(leaves[0], shapes, starts, leaves[1], leaves[2])
    return list(torch.autograd.grad(out, leaves, grad_output))
"""


@pytest.fixture(scope="module")
def gpu_image_env(tmp_path_factory):
    """Environment whose Python cannot import the packages the GPU image lacks."""
    shim = tmp_path_factory.mktemp("no_detectron2")
    (shim / "sitecustomize.py").write_text(_BLOCKER.format(blocked=MISSING_ON_GPU_IMAGE))
    # PYTEST_DISABLE_PLUGIN_AUTOLOAD: pytest plugins installed here, not there (hydra's imports
    # omegaconf), would otherwise break the tests step before it starts.
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(shim), OMP_NUM_THREADS="1",
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    probe = subprocess.run([sys.executable, "-c", "import detectron2"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr
    return env


def _run(env, out, *args):
    return subprocess.run(["bash", SCRIPT, "--dry-run", "--out", str(out), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=_RUN_TIMEOUT_S)


def _table(text, section):
    """Rows (lists of cells) of the Markdown table under ``## section``."""
    body = text.split(f"## {section}")[1].split("\n## ")[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.fixture(scope="module")
def dry_run(gpu_image_env, tmp_path_factory):
    baseline = tmp_path_factory.mktemp("baseline")
    (baseline / "MultiScaleDeformableAttention.py").write_text(textwrap.dedent(_FAKE_BASELINE))
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(gpu_image_env, out, "--baseline-ext", str(baseline))
    return proc, out


def test_dry_run_passes_without_detectron2(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_check.log", "gpu_records.json", "gpu_results.md"]
    steps = _table((out / "gpu_results.md").read_text(), "Steps")
    assert [s["step"] for s in steps] == STEPS
    assert all(s["status"] == "ok" and float(s["wall s"]) > 0 for s in steps)
    for name in STEPS:
        assert re.search(rf"\[gpu_check\] {re.escape(name)}\s+ok", proc.stdout)
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== step {name}: ok in" in log for name in STEPS)


def test_dry_run_writes_op_model_and_test_rows(dry_run):
    _, out = dry_run
    text = (out / "gpu_results.md").read_text()
    assert text.startswith("# GPU check (dry run)")
    ops = _table(text, "MSDeformAttn op")
    assert all(r["date"] and r["torch"] and r["CUDA"] for r in ops)
    assert all(re.search(r"no GPU, load [\d.]+ [\d.]+ [\d.]+$", r["machine"]) for r in ops)
    measured = {(r["impl"], r["dtype"], r["shape"], r["input"]) for r in ops if r["fwd ms"][0].isdigit()}
    for size in ("64x64", "96x96"):
        for shape in ("pixel-decoder", "adapter-extractor"):
            assert {("compiled", "float32", shape, size), ("pytorch", "float32", shape, size),
                    ("baseline", "float32", shape, size), ("pytorch", "bfloat16", shape, size)} <= measured
            # the original kernel takes float32 only: no bfloat16 row for it
            assert not any(r["impl"] == "baseline" and r["dtype"] == "bfloat16" for r in ops)
    assert all(float(r["peak MiB"]) >= 0 for r in ops if r["fwd ms"][0].isdigit())
    assert all("dev/benchmark.py ops" in r["command"] for r in ops)

    # the ViT-L step and the 7B step, both with bf16 frozen weights as their configs
    models = {(r["mode"], "--head official" in r["command"]): r for r in _table(text, "Model")}
    assert set(models) == {("train", False), ("infer", False), ("infer", True)}
    assert all(r["frozen ViT"] == "bf16" for r in models.values())
    assert float(models[("train", False)]["ms/iter"]) > 0 and float(models[("infer", True)]["images/s"]) > 0
    tests = _table(text, "Tests")[0]["result"]
    passed = int(re.match(r"(\d+) passed, 0 failed, 0 errors", tests).group(1))
    assert passed > 0

    # the torch.compile speed-up: eager and compiled inference of the tiny model (aot_eager in a dry run)
    (row,) = _table(text, "torch.compile")
    assert (row["model"], row["mode"], row["backend"]) == ("tiny", "infer", "aot_eager")
    assert float(row["eager ms"]) > 0 and float(row["compiled ms"]) > 0
    assert float(row["speed-up"].rstrip("x")) == pytest.approx(float(row["eager ms"]) / float(row["compiled ms"]),
                                                               rel=0.02, abs=0.01)
    assert float(row["max abs pred_masks diff"]) < 0.1  # same model and bf16 autocast: bf16 rounding only
    assert "dev/benchmark.py compile" in row["command"]

    records = json.loads((out / "gpu_records.json").read_text())
    assert {r["kind"] for r in records["records"]} == {"op", "model", "compile"}
    assert records["tests"]["passed"] == passed


def test_dry_run_judges_every_target(dry_run):
    _, out = dry_run
    targets = _table((out / "gpu_results.md").read_text(), "Targets")
    figures = [t["figure"] for t in targets]
    for prefix, count in [("op forward vs original kernel", 2), ("op backward vs original kernel", 2),
                          ("op fwd+bwd, bfloat16 I/O vs float32", 4), ("op fwd+bwd vs grid_sample reference", 8),
                          ("ViT-L/16 + adapter + M2F(256) train step", 1), ("inference, 512x512", 1),
                          ("ViT-7B/16 + official head inference", 1), ("op tests", 1)]:
        assert sum(f.startswith(prefix) for f in figures) == count, prefix
    judged = [t for t in targets if t["result"] != "not measured"]
    assert all(re.fullmatch(r"dry run: (pass|FAIL)", t["result"]) for t in judged)
    fwd = next(t for t in targets if t["figure"].startswith("op forward vs original kernel"))
    ratio, ours, theirs = re.match(r"([\d.]+)x \(([\d.]+) vs ([\d.]+) ms\)", fwd["value"]).groups()
    assert float(ratio) == pytest.approx(float(theirs) / float(ours), rel=0.01)
    # only the compiled bfloat16 rows can be missing (CPU builds without bfloat16 kernels)
    missing = [t["figure"] for t in targets if t["result"] == "not measured"]
    assert all("bfloat16" in f for f in missing)


def test_a_failed_step_is_reported_and_the_next_one_runs(gpu_image_env, tmp_path):
    empty = tmp_path / "no_extension_here"
    empty.mkdir()
    out = tmp_path / "out"
    proc = _run(gpu_image_env, out, "--baseline-ext", str(empty), "--steps", "op-512", "model-7b")
    assert proc.returncode == 1
    assert "no MultiScaleDeformableAttention module" in proc.stdout  # the failed step's output tail
    text = (out / "gpu_results.md").read_text()
    steps = {s["step"]: s["status"] for s in _table(text, "Steps")}
    assert steps == {"op-512": "failed (exit code 1)", "model-7b": "ok"}
    assert [r["mode"] for r in _table(text, "Model")] == ["infer"]


def test_steps_that_would_pass_the_time_limit_are_not_started(gpu_image_env, tmp_path):
    proc = _run(gpu_image_env, tmp_path, "--time-limit", "1")
    assert proc.returncode == 1
    steps = _table((tmp_path / "gpu_results.md").read_text(), "Steps")
    assert [s["status"] for s in steps] == ["stopped: time limit"] * len(STEPS)
    targets = _table((tmp_path / "gpu_results.md").read_text(), "Targets")
    assert targets and all(t["result"].startswith("not measured") for t in targets)


def test_the_detectron2_step_runs_the_config_benchmark(tmp_path):
    detectron2 = pytest.importorskip("detectron2")
    source = os.path.dirname(os.path.dirname(detectron2.__file__))
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = _run(env, tmp_path, "--d2-source", source, "--steps", "d2-vitl")
    assert proc.returncode == 0, proc.stdout[-3000:]
    text = (tmp_path / "gpu_results.md").read_text()
    rows = {r["mode"]: r for r in _table(text, "Model")}
    assert set(rows) == {"train (detectron2)", "infer (detectron2)"}
    assert all(r["frozen ViT"] == "float32" for r in rows.values())  # the dry run's synthetic config
    assert float(rows["train (detectron2)"]["ms/iter"]) > 0
    assert float(rows["infer (detectron2)"]["images/s"]) > 0
    assert all("dev/benchmark.py config" in r["command"] for r in rows.values())
    figures = [t["figure"] for t in _table(text, "Targets") if t["result"] != "not measured"]
    assert any("detectron2 trainer" in f for f in figures)

"""dev/benchmark_memory.py runs end to end (tiny sizes; the figures themselves are in docs/benchmarks.md)."""
import os
import subprocess
import sys

import pytest

from helpers import REPO  # noqa: E402
TOOL = os.path.join(REPO, "dev", "benchmark_memory.py")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")


def _run(*args):
    path = os.pathsep.join([os.path.join(REPO, "projects"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run([sys.executable, TOOL, "--threads", "1", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]


def test_load_mode_measures_each_format_and_dtype(tmp_path):
    rows = _run("load", "--presets", "vits16", "--formats", "pth", "hf", "--dtypes", "bf16", "--workdir",
                str(tmp_path / "work"))
    header, *results = rows
    assert header[0].strip() == "preset" and len(results) == 2
    assert [(r[1].strip(), r[2].strip()) for r in results] == [("pth", "bf16"), ("hf", "bf16")]
    for row in results:
        weights, peak = float(row[3]), float(row[4])
        assert weights == pytest.approx(41, abs=1)  # ViT-S/16 with bf16 Linear weights: 41 MiB
        assert peak > 0
    assert not (tmp_path / "work").exists()  # checkpoints removed without --keep


def test_slide_mode_runs_each_slide_batch():
    rows = _run("slide", "--tiny", "--frame", "64", "128", "--crop", "64", "64", "--stride", "64", "64",
                "--slide-batch", "0", "2")
    assert [row[0].strip() for row in rows] == ["slide_batch", "whole frame", "2"]

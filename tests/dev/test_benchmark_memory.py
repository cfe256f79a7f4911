"""dev/benchmark.py memory runs end to end (tiny sizes; the figures themselves are in docs/benchmarks.md)."""
import os
import subprocess
import sys

import pytest

from helpers import REPO  # noqa: E402
TOOL = os.path.join(REPO, "dev", "benchmark.py")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")


def _run(*args):
    path = os.pathsep.join([os.path.join(REPO, "projects"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run([sys.executable, TOOL, "memory", "--threads", "1", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]


def test_load_mode_measures_each_format_and_dtype(tmp_path):
    rows = _run("load", "--presets", "vits16", "--formats", "pth", "hf", "--dtypes", "bf16", "--workdir",
                str(tmp_path / "work"), "--page-release", "on", "off")
    header, *results = rows
    assert header[0].strip() == "preset" and len(results) == 4
    assert [tuple(cell.strip() for cell in r[1:4]) for r in results] == [
        ("pth", "bf16", "on"), ("pth", "bf16", "off"), ("hf", "bf16", "on"), ("hf", "bf16", "off")]
    peaks = {}
    for row in results:
        weights, peak = float(row[4]), float(row[5])
        assert weights == pytest.approx(41, abs=1)  # ViT-S/16 with bf16 Linear weights: 41 MiB
        peaks[row[1].strip(), row[3].strip()] = peak
    # without the page release the float32 file's pages stay resident beside the bf16 copy
    assert peaks["pth", "on"] < 1.5 * weights and peaks["pth", "off"] > 2 * peaks["pth", "on"]
    assert not (tmp_path / "work").exists()  # checkpoints removed without --keep


def test_slide_mode_runs_each_slide_batch():
    rows = _run("slide", "--tiny", "--frame", "64", "128", "--crop", "64", "64", "--stride", "64", "64",
                "--slide-batch", "0", "2")
    assert [row[0].strip() for row in rows] == ["slide_batch", "whole frame", "2"]

"""dev/benchmark.py: one entry point, a mode first; the backbone and head modes end to end at tiny
sizes on the CPU (the figures themselves are in docs/benchmarks.md; the ops, compile and config
modes run in tests/dev/test_gpu_check.py and tests/tools/)."""
import json

import pytest
import torch
from helpers import DEV, load_tool

benchmark = load_tool("benchmark", folder=DEV)


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads changes the whole process


def _table(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.mark.parametrize("argv", [[], ["benchmark_ops"]], ids=["none", "unknown"])
def test_a_mode_comes_first(argv, capsys):
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err
    assert "a mode first" in err and "{config,head,backbone,ops,compile,official,memory,scene}" in err


def test_backbone_mode_compares_ours_with_transformers(tmp_path, capsys):
    pytest.importorskip("transformers")
    records = tmp_path / "records.json"
    code = benchmark.main(["backbone", "--device", "cpu", "--dtype", "fp32", "--preset", "none", "--embed-dim", "64",
                           "--depth", "2", "--num-heads", "2", "--batch", "1", "--size", "32", "--iters", "2",
                           "--warmup", "1", "--threads", "1", "--json", str(records)])
    assert code == 0
    out = capsys.readouterr().out
    assert ", load " in out.splitlines()[0]  # the machine line names the load average
    rows = {row["impl"]: row for row in _table(out)}
    assert set(rows) == {"ours", "transformers"}
    assert float(rows["transformers"]["max abs diff vs ours"]) < 1e-4  # same weights, same math in fp32
    assert {r["impl"] for r in json.loads(records.read_text())} == {"ours", "transformers"}


def test_head_mode_runs_the_tiny_model(capsys):
    code = benchmark.main(["head", "--tiny", "--head", "m2f", "--device", "cpu", "--dtype", "fp32", "--iters", "1",
                           "--warmup", "0", "--threads", "1", "--date", "2026-12-07"])
    assert code == 0
    rows = _table(capsys.readouterr().out)
    assert [(r["mode"], r["model"], r["date"]) for r in rows] == [("train", "tiny", "2026-12-07"),
                                                                  ("infer", "tiny", "2026-12-07")]
    assert all(float(r["ms/iter"]) > 0 for r in rows)


def test_scene_mode_reports_the_peak_memory_of_each_size(tmp_path, capfd):
    pytest.importorskip("rasterio")
    code = benchmark.main(["scene", "--sizes", "96", "--work-dir", str(tmp_path), "--crop-size", "64", "64",
                           "--stride", "48", "48", "--block-size", "64", "64", "--opts", "train.device=cpu"])
    assert code == 0
    rows = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert [row["size"] for row in rows] == [96]
    assert rows[0]["peak_rss_mib"] >= rows[0]["peak_rss_mib_after_model"] > 0

"""dinov3_m2f.benchmarking: the measuring helpers shared by the benchmark tools."""
import json
import time

import pytest
import torch

from dinov3_m2f import benchmarking
from dinov3_m2f.benchmarking import (
    MemoryMeter,
    describe_machine,
    markdown_table,
    parse_device,
    random_label_maps,
    time_alternating,
    time_ms,
    write_records,
)

MIB = 2**20


def test_parse_device():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu'"):
        parse_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            parse_device("cuda:0")


def test_time_ms_runs_warmup_then_times_each_call():
    calls = []

    def work():
        calls.append(None)
        time.sleep(0.002)

    times = time_ms(work, device=torch.device("cpu"), warmup=2, iters=3)
    assert len(calls) == 5 and len(times) == 3
    assert all(t >= 1.9 for t in times)  # each timed call holds a 2 ms sleep
    with pytest.raises(ValueError, match="iters"):
        time_ms(work, device=torch.device("cpu"), warmup=0, iters=0)


def test_time_alternating_takes_turns_call_by_call():
    calls = []

    def contender(name):
        def work():
            calls.append(name)
            time.sleep(0.002 if name == "a" else 0.0)
            sum(range(20000))  # a little process CPU time

        return work

    timings = time_alternating({"a": contender("a"), "b": contender("b")}, device=torch.device("cpu"),
                               warmup=1, iters=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds in turn
    assert all(len(t.ms) == len(t.cpu_ms) == 3 for t in timings.values())
    assert timings["a"].median_ms >= 1.9  # the sleep counts in the wall time ...
    assert all(0 < ms < timings["a"].median_ms for ms in timings["a"].cpu_ms)  # ... not in the CPU time


def test_describe_machine_names_the_load_average(monkeypatch):
    monkeypatch.setattr(benchmarking.os, "getloadavg", lambda: (3.5, 2.25, 1.0))
    assert describe_machine(torch.device("cpu")).endswith(", load 3.50 2.25 1.00")


def test_cpu_memory_meter_sees_a_block_allocation():
    meter = MemoryMeter(torch.device("cpu"))
    meter.start()
    block = torch.ones(64 * MIB // 4)  # 64 MiB, every page written
    peak = meter.stop()
    del block
    assert peak.growth_mib >= 60
    assert peak.peak_mib >= peak.growth_mib and peak.reserved_mib == peak.peak_mib
    assert peak.cell().endswith("(CPU peak RSS growth)") and peak.cell().split()[0].isdigit()


def test_cpu_memory_meter_does_not_count_what_was_resident_before():
    block = torch.ones(64 * MIB // 4)
    meter = MemoryMeter(torch.device("cpu"))
    meter.start()
    block.add_(1)  # touches the pages again, allocates nothing
    peak = meter.stop()
    assert peak.growth_mib < 16


def test_markdown_table():
    table = markdown_table(["a", "b"], [[1, "x"], [2.5, ""]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 |  |"]
    with pytest.raises(ValueError, match="3 cells, the header 2"):
        markdown_table(["a", "b"], [[1, 2, 3]])


def test_random_label_maps_hold_a_few_classes_in_blocks():
    maps = random_label_maps(batch_size=3, size=(64, 48), num_classes=150,
                             generator=torch.Generator().manual_seed(0))
    assert maps.shape == (3, 64, 48) and maps.dtype == torch.int64
    grid = benchmarking.LABEL_GRID
    for label_map in maps:
        classes = label_map.unique()
        assert 1 < len(classes) <= benchmarking.CLASSES_PER_IMAGE
        assert classes.min() >= 0 and classes.max() < 150
        blocks = label_map.view(grid, 64 // grid, grid, 48 // grid)  # [8, 8, 8, 6]
        assert (blocks == blocks[:, :1, :, :1]).all()  # constant inside each block
    few = random_label_maps(batch_size=1, size=(16, 16), num_classes=3, generator=torch.Generator())
    assert few.max() < 3


def test_write_records_replaces_the_file(tmp_path):
    path = tmp_path / "records.json"
    write_records(str(path), [{"a": 1}])
    write_records(str(path), [{"a": 1}, {"b": 2.5}])
    assert json.loads(path.read_text()) == [{"a": 1}, {"b": 2.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["records.json"]
    write_records(None, [{"a": 1}])  # no --json: nothing written

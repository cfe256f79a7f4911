"""dinov3_m2f.benchmarking.interleaved_median_ms: contenders alternate call by call."""
import re

import pytest

from dinov3_m2f.benchmarking import interleaved_median_ms, load_average


def test_contenders_alternate_call_by_call_with_a_rotating_order():
    calls = []
    medians = interleaved_median_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                     "c": lambda: calls.append("c")}, warmup=1, iters=3)
    assert calls == list("abc" "bca" "cab" "abc")  # each round calls all three, the first rotates
    assert set(medians) == {"a", "b", "c"} and all(v >= 0 for v in medians.values())
    with pytest.raises(ValueError, match="iters"):
        interleaved_median_ms({"a": lambda: None}, warmup=0, iters=0)
    assert re.fullmatch(r"\d+\.\d\d \d+\.\d\d \d+\.\d\d", load_average())

"""The config resolvers: evaluation/checkpoint periods and the warmup follow train.max_iter."""
import pytest
from omegaconf import OmegaConf

from dinov3_m2f.config_resolvers import MAX_WARMUP_FRACTION, period, warmup_fraction


def test_period_spreads_events_over_the_run_and_is_at_least_one():
    assert period(160000, 10) == 16000
    assert period(95, 10) == 9
    assert period(5, 10) == 1


def test_warmup_fraction_is_capped_for_short_runs():
    assert warmup_fraction(1500, 160000) == pytest.approx(1500 / 160000)
    assert warmup_fraction(1500, 1000) == MAX_WARMUP_FRACTION


def test_interpolations_follow_an_override():
    cfg = OmegaConf.create({"train": {"max_iter": 90000, "eval_period": "${period:${.max_iter},10}",
                                      "warmup": "${warmup_fraction:1500,${train.max_iter}}"}})
    assert (cfg.train.eval_period, cfg.train.warmup * 90000) == (9000, pytest.approx(1500))
    cfg.train.max_iter = 40000
    assert cfg.train.eval_period == 4000

"""OmegaConf resolvers of the configs: values that follow ``train.max_iter``, also when it is
overridden on the command line (OmegaConf only; registered when this module is imported, which
:mod:`dinov3_m2f.config_schema` and ``configs/common/m2f_vitl16_base.py`` do).

* ``${period:<max_iter>,<count>}``: the iterations between ``count`` events spread evenly over
  a run (evaluations, checkpoints), at least 1.
* ``${warmup_fraction:<iterations>,<max_iter>}``: a warmup of ``iterations`` as the fraction of
  the run that ``WarmupParamScheduler(warmup_length=...)`` takes, at most
  :data:`MAX_WARMUP_FRACTION` (a run shorter than ten warmups warms up over its first tenth).
"""
from omegaconf import OmegaConf

__all__ = ["MAX_WARMUP_FRACTION", "period", "warmup_fraction"]

MAX_WARMUP_FRACTION = 0.1


def period(max_iter: int, count: int) -> int:
    """Iterations between ``count`` events spread evenly over ``max_iter`` iterations (>= 1)."""
    return max(max_iter // count, 1)


def warmup_fraction(iterations: int, max_iter: int) -> float:
    """``iterations`` of warmup as a fraction of ``max_iter``, at most :data:`MAX_WARMUP_FRACTION`."""
    return min(iterations / max_iter, MAX_WARMUP_FRACTION)


for _name, _resolver in (("period", period), ("warmup_fraction", warmup_fraction)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)

from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

# Linear warmup then poly(0.9) decay to 0 over the whole run. `warmup_length` is a fraction of
# train.max_iter: leaf configs set it as `<warmup iters> / train.max_iter`.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(PolynomialDecayParamScheduler)(base_value=1.0, power=0.9),
    warmup_length=0.01,
    warmup_factor=1e-6,
)

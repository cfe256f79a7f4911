"""The private detectron2 / fvcore names of d2/detectron2_private.py still behave as relied on by
the installed versions; each failure names the private name that changed. And no other module of
d2/ or tools/ reaches a private name of detectron2 or fvcore."""
import re
from pathlib import Path
from types import SimpleNamespace

import torch
from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf
from torch import nn

from dinov3_m2f.d2 import detectron2_private
from dinov3_m2f.d2.detectron2_private import CheckpointerExtension, setup_logger_before_default_setup

from helpers import REPO

PRIVATE_MODULE = Path(detectron2_private.__file__)
CHECKED_SOURCES = sorted((Path(REPO) / "projects" / "dinov3_m2f" / "d2").glob("*.py")) + sorted(
    (Path(REPO) / "tools").glob("*.py"))


class _Recording(CheckpointerExtension):
    def __init__(self, model):
        super().__init__(model)
        self.calls = []

    def read_file(self, filename):
        self.calls.append("_load_file")
        return super().read_file(filename)

    def load_model_state(self, checkpoint):
        self.calls.append("_load_model")
        self.incompatible = super().load_model_state(checkpoint)
        return self.incompatible

    def report_incompatible_keys(self, incompatible):
        self.calls.append("_log_incompatible_keys")
        super().report_incompatible_keys(incompatible)


def test_checkpointer_load_calls_its_three_private_steps(tmp_path):
    source = nn.Linear(2, 3)
    path = tmp_path / "model.pth"
    torch.save({"model": source.state_dict(), "extra": 1}, path)
    target = nn.Sequential(nn.Linear(2, 3))  # keys "0.weight": every key mismatches
    checkpointer = _Recording(target)
    left = checkpointer.load(str(path))
    expected = ["_load_file", "_load_model", "_log_incompatible_keys"]
    for name in expected:
        assert name in checkpointer.calls, (
            f"fvcore Checkpointer.load no longer calls {name}: update CheckpointerExtension "
            f"(calls seen: {checkpointer.calls})"
        )
    assert checkpointer.calls == expected, f"fvcore Checkpointer.load calls them in another order: {checkpointer.calls}"
    assert left == {"extra": 1}, "fvcore Checkpointer.load no longer returns the unused keys"


def test_checkpointer_load_model_returns_incompatible_keys(tmp_path):
    path = tmp_path / "model.pth"
    state = {"weight": torch.zeros(3, 2), "bias": torch.zeros(4), "extra": torch.zeros(1)}
    torch.save({"model": state}, path)
    checkpointer = _Recording(nn.Linear(2, 3))
    checkpointer.load(str(path))
    incompatible = checkpointer.incompatible
    for field in ("missing_keys", "unexpected_keys", "incorrect_shapes"):
        assert hasattr(incompatible, field), f"fvcore Checkpointer._load_model's result has no {field}"
    assert incompatible.unexpected_keys == ["extra"]
    assert [key for key, *_ in incompatible.incorrect_shapes] == ["bias"]


def test_setup_logger_is_memoized_so_default_setup_reuses_the_handlers(tmp_path):
    assert hasattr(setup_logger, "cache_info"), "detectron2 setup_logger is no longer memoized"
    out = str(tmp_path / "out")
    loggers = setup_logger_before_default_setup(out, rank=0)
    assert [logger.name for logger in loggers] == ["fvcore", "detectron2"]
    handlers = {logger.name: list(logger.handlers) for logger in loggers}
    cfg = OmegaConf.create({"train": {"output_dir": out, "seed": 0, "cudnn_benchmark": False}})
    default_setup(cfg, SimpleNamespace(eval_only=True))
    for logger in loggers:
        assert logger.handlers == handlers[logger.name], (
            f"default_setup no longer calls setup_logger(output_dir, distributed_rank=rank) for "
            f"the {logger.name!r} logger as setup_logger_before_default_setup does: it added handlers"
        )


def test_no_other_module_reaches_a_private_detectron2_name():
    # an attribute "._name" that no module here defines belongs to detectron2, fvcore or torch
    used, defined, imported = {}, set(), []
    for path in CHECKED_SOURCES:
        if path == PRIVATE_MODULE:
            continue
        text = path.read_text()
        # os._exit is documented standard library, not a private name
        for name in re.findall(r"(?<!\bos)\.(_[a-z]\w*)", text):
            used.setdefault(name, set()).add(path.name)
        defined.update(re.findall(r"def (_[a-z]\w*)", text))
        defined.update(re.findall(r"(?:self|cls)\.(_[a-z]\w*)\s*(?::[^=\n]*)?=", text))
        imported += [(path.name, line) for line in re.findall(
            r"^from (?:detectron2|fvcore)\S* import .*\b_[a-z].*$", text, flags=re.M)]
    foreign = {name: sorted(files) for name, files in used.items() if name not in defined}
    assert not foreign, f"private names outside d2/detectron2_private.py: {foreign}"
    assert not imported, f"private imports outside d2/detectron2_private.py: {imported}"

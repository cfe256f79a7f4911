"""The private detectron2 and fvcore names dinov3_m2f relies on, all here and nowhere else.

Everything else in ``d2/`` uses public API. A detectron2 or fvcore update can rename or change
these without notice; ``tests/d2/test_detectron2_private.py`` checks each one on the installed
version and names it when it changed.

* :class:`CheckpointerExtension`: fvcore's ``Checkpointer.load`` calls three underscore methods,
  the points where a subclass changes how a file is read and its state loaded (detectron2's own
  ``DetectionCheckpointer`` overrides them too); this class gives them public names.
* :func:`setup_logger_before_default_setup`: ``detectron2.utils.logger.setup_logger`` is
  memoized on its arguments, so handlers configured before ``default_setup`` are the ones
  ``default_setup`` logs through.
"""
import logging
from typing import Any, Dict, List

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.logger import setup_logger

__all__ = ["CheckpointerExtension", "setup_logger_before_default_setup"]


class CheckpointerExtension(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose load steps are public methods to override.

    Relies on fvcore's ``Checkpointer.load(path)`` calling, in order, ``_load_file(path)``,
    ``_load_model(checkpoint)`` and, with what that returns, ``_log_incompatible_keys``.
    """

    def read_file(self, filename: str) -> Dict[str, Any]:
        """The checkpoint dict of ``filename`` (detectron2: ``.pkl`` or ``torch.load``)."""
        return super()._load_file(filename)

    def load_model_state(self, checkpoint: Dict[str, Any]) -> Any:
        """Load ``checkpoint["model"]`` into the model; returns fvcore's ``_IncompatibleKeys``
        (``missing_keys``, ``unexpected_keys``, ``incorrect_shapes``)."""
        return super()._load_model(checkpoint)

    def report_incompatible_keys(self, incompatible: Any) -> None:
        """Log what :meth:`load_model_state` returned (fvcore: one warning per kind)."""
        super()._log_incompatible_keys(incompatible)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        return self.read_file(filename)

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        return self.load_model_state(checkpoint)

    def _log_incompatible_keys(self, incompatible: Any) -> None:
        self.report_incompatible_keys(incompatible)


def setup_logger_before_default_setup(output_dir: str, *, rank: int) -> List[logging.Logger]:
    """The ``"fvcore"`` and ``"detectron2"`` loggers with the handlers ``default_setup(cfg, args)``
    will log through, created now so that they can be adjusted before it logs.

    Relies on ``setup_logger`` being memoized (``functools.lru_cache``) on its arguments as
    passed: ``default_setup`` calls ``setup_logger(output_dir, distributed_rank=rank,
    name="fvcore")`` and ``setup_logger(output_dir, distributed_rank=rank)``, the calls made
    here, and gets these loggers back without adding handlers.
    """
    return [setup_logger(output_dir, distributed_rank=rank, name="fvcore"),
            setup_logger(output_dir, distributed_rank=rank)]

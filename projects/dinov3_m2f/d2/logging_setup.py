"""The loggers of a training or evaluation run: detectron2's, with ANSI colour codes kept for
terminals and left out of log files (``log.txt``) and redirected output.

detectron2 colours the config file it logs (pygments) and the level of warnings, whatever the
stream; :func:`setup_run_logging`, called before ``default_setup``, strips those codes from every
handler whose stream is not a terminal.
"""
import logging
import re
from typing import IO

from detectron2.utils.logger import setup_logger

from .detectron2_private import setup_logger_before_default_setup

__all__ = ["PlainTextFormatter", "colour_only_on_terminals", "setup_run_logging"]

# ANSI "select graphic rendition" sequences: colours, bold, reset.
ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")


class PlainTextFormatter(logging.Formatter):
    """Formats as ``formatter`` does, without ANSI colour codes."""

    def __init__(self, formatter: logging.Formatter):
        super().__init__()
        self.formatter = formatter

    def format(self, record: logging.LogRecord) -> str:
        return ANSI_SGR.sub("", self.formatter.format(record))


def _is_terminal(stream: IO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def colour_only_on_terminals(logger: logging.Logger) -> None:
    """Strip ANSI colour codes in every handler of ``logger`` whose stream is not a terminal."""
    for handler in logger.handlers:
        stream = getattr(handler, "stream", None)
        if stream is None or _is_terminal(stream) or isinstance(handler.formatter, PlainTextFormatter):
            continue
        handler.setFormatter(PlainTextFormatter(handler.formatter or logging.Formatter()))


def setup_run_logging(output_dir: str, *, rank: int) -> None:
    """Set up the ``fvcore``, ``detectron2`` and ``dinov3_m2f`` loggers of a run (console and
    ``output_dir/log.txt``) with colour only on terminals; call it before ``default_setup``."""
    loggers = setup_logger_before_default_setup(output_dir, rank=rank)
    loggers.append(setup_logger(output_dir, distributed_rank=rank, name="dinov3_m2f"))
    for logger in loggers:
        colour_only_on_terminals(logger)

"""Run logging: ANSI colour codes (detectron2 colours the config file it logs, and warning levels)
stay on terminals and are left out of log files and redirected output."""
import io
import logging

from dinov3_m2f.d2.logging_setup import PlainTextFormatter, colour_only_on_terminals

COLOURED = "\x1b[38;5;197mmodel\x1b[39m = \x1b[01mL\x1b[0m(...)"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_colour_codes_are_stripped_off_terminals_only():
    logger = logging.getLogger("test_logging_setup")
    logger.propagate = False
    file_stream, terminal = io.StringIO(), _Terminal()
    handlers = [logging.StreamHandler(file_stream), logging.StreamHandler(terminal)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
    try:
        colour_only_on_terminals(logger)
        colour_only_on_terminals(logger)  # idempotent
        logger.warning(COLOURED)
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
    assert file_stream.getvalue() == "[test_logging_setup] model = L(...)\n"
    assert terminal.getvalue() == f"[test_logging_setup] {COLOURED}\n"
    assert isinstance(handlers[0].formatter, PlainTextFormatter)
    assert not isinstance(handlers[1].formatter, PlainTextFormatter)

"""pytest option ``--only-cuda-skips`` (set by ``dev/run_tests.sh``): the run fails when a test or
a test module was skipped for any reason but a missing CUDA GPU.

A skip is allowed when its reason contains ``CUDA GPU`` (``"needs a CUDA GPU"``, ``"needs two CUDA
GPUs"``). Anything else — a missing detectron2, transformers, onnxruntime or compiled extension — means the
set-up did not finish, and counting those tests as fine would hide that they never ran. Plain
``pytest`` runs stay lenient. The hooks are imported by ``conftest.py``; ``-p skip_policy`` loads
them too.
"""
from typing import List

import pytest

ALLOWED_SKIP = "CUDA GPU"


class OnlyCudaSkips:
    """Collects disallowed skips, lists them at the end and makes the run's exit status 1."""

    def __init__(self) -> None:
        self.disallowed: List[str] = []

    def _check(self, report) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        # a skip's longrepr is (path, line, "Skipped: <reason>")
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if ALLOWED_SKIP not in reason:
            self.disallowed.append(f"{report.nodeid}: {reason}")

    def pytest_runtest_logreport(self, report) -> None:
        self._check(report)

    def pytest_collectreport(self, report) -> None:
        self._check(report)  # a module-level skip, e.g. pytest.importorskip("detectron2")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.disallowed:
            terminalreporter.write_sep(
                "=", f"--only-cuda-skips: {len(self.disallowed)} skip(s) not allowed", red=True
            )
            for line in self.disallowed:
                terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session) -> None:
        if self.disallowed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--only-cuda-skips", action="store_true",
        help="fail the run if anything is skipped for a reason other than a missing CUDA GPU",
    )


def pytest_configure(config) -> None:
    if config.getoption("--only-cuda-skips"):
        config.pluginmanager.register(OnlyCudaSkips(), "only_cuda_skips")

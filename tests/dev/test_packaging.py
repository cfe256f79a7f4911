"""The package version has one owner: setup.py reads ``dinov3_m2f.__version__``."""
import os
import subprocess
import sys

import dinov3_m2f

from helpers import REPO  # noqa: E402
SETUP_TIMEOUT_S = 300


def test_setup_reports_the_package_version():
    proc = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO, capture_output=True,
                          text=True, timeout=SETUP_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == dinov3_m2f.__version__

"""Every user tool starts without a warning: ``--help`` runs with warnings turned into errors
(detectron2's import scripts fvcore functions with the deprecated ``torch.jit.script``; the tools
import it through ``dinov3_m2f.d2``, which keeps that one message out)."""
import os
import subprocess
import sys

import pytest
from helpers import REPO, TOOLS

_TIMEOUT_S = 300


@pytest.mark.parametrize("tool", sorted(path.name for path in TOOLS.glob("*.py")))
def test_tool_help_prints_no_warning(tool, synthetic_env):
    proc = subprocess.run([sys.executable, "-W", "error", os.path.join(TOOLS, tool), "--help"],
                          cwd=REPO, env=synthetic_env, capture_output=True, text=True, timeout=_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]

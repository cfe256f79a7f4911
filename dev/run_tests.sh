#!/usr/bin/env bash
# The test command: set up this machine (dev/setup_env.sh), then run the whole suite.
# The set-up fails when detectron2 cannot be installed, and --only-cuda-skips (tests/skip_policy.py)
# fails the run when anything but a test that needs a CUDA GPU is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup_env.sh
exec "${PYTHON:-python3}" -m pytest tests --only-cuda-skips "$@"

#!/usr/bin/env bash
# The test command: set up this machine (tools/setup_env.sh), then run the whole suite.
# Tests that need detectron2 are skipped where it is not installed; the CUDA tests where no GPU is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec "${PYTHON:-python3}" -m pytest tests "$@"

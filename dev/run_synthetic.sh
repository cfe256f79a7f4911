#!/usr/bin/env bash
# The main job: set up this machine, then train and evaluate the embedded synthetic default.
# Extra arguments are passed to tools/train_net.py (e.g. --num-gpus 2, or key=value overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup_env.sh
exec "${PYTHON:-python3}" tools/train_net.py --config-file configs/synthetic/m2f_tiny_synthetic.py "$@"

#!/usr/bin/env bash
# Installs everything dinov3-m2f needs into the current python3, then builds the op in place.
# detectron2 is not on PyPI: install it from its official instructions first (see README).
#
# Environment:
#   PYTHON                python interpreter to install into (default: python3)
#   FORCE_CUDA=0|1        compile the CUDA kernels (default: 1 when nvcc is found)
#   TORCH_CUDA_ARCH_LIST  CUDA archs to compile for (default: the visible GPU, else setup.py's list)
#   CUDA_HOME             CUDA toolkit root (default: /usr/local/cuda)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"

"$PYTHON" -m pip install -q "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
"$PYTHON" -m pip install -q fvcore pycocotools opencv-python-headless scipy ninja safetensors \
    pytest transformers

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if [ -z "${FORCE_CUDA:-}" ]; then
  if command -v nvcc >/dev/null 2>&1; then FORCE_CUDA=1; else FORCE_CUDA=0; fi
fi
export FORCE_CUDA
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
"$PYTHON" -m pip install -q --no-build-isolation --no-deps -e .
"$PYTHON" -c "import torch, dinov3_m2f; print('dinov3_m2f op:', torch.ops.dinov3_m2f.ms_deform_attn_forward)"

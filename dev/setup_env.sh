#!/usr/bin/env bash
# Sets up a Python environment for dinov3-m2f, one line per step, and ends with the environment
# report (python -m dinov3_m2f.collect_env). pip's output is kept in a log that is printed in full
# only when a step fails.
#
#   torch        An installed torch/torchvision pair is kept when it is in the supported range and
#                works (torchvision's compiled ops load). The pinned pair is installed only when
#                torch is missing, or replaces a CPU build that cannot be used; a GPU build of
#                torch is never replaced (dev/setup_torch.py decides). Every later pip install
#                is constrained to the torch/torchvision found here.
#   build tools  setuptools and ninja, for the two source builds below.
#   detectron2   Only when `import detectron2` fails: from DETECTRON2_SOURCE, built with
#                --no-build-isolation against the installed torch.
#   dinov3_m2f   Editable install with its dependencies and the test, deploy and geo extras (deploy:
#                onnx, onnxruntime, onnxscript for tools/export_model.py and tools/infer_onnx.py;
#                geo: rasterio for GeoTIFF scenes in tools/segment_scenes.py);
#                compiles the op (with CUDA kernels when torch is a CUDA build and nvcc matches it).
#                Skipped ("op up to date, kept") when the op's sources and build files, torch, the
#                interpreter and the CUDA build settings are those of the last install here
#                (dev/op_build.py keeps the record next to the compiled extension).
#
# Environment:
#   PYTHON                interpreter or venv python to set up (default: python3)
#   DETECTRON2_SOURCE     where detectron2 comes from: any pip requirement, e.g. a local checkout
#                         (default: the official repository at the commit the project is tested with)
#   FORCE_CUDA=0|1        compile the op's CUDA kernels or not (default: decided as above)
#   TORCH_CUDA_ARCH_LIST  CUDA archs to compile for (default: the visible GPU, else setup.py's list)
#   CUDA_HOME             CUDA toolkit root (default: /usr/local/cuda)
#   MAX_JOBS              parallel compile jobs (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
DETECTRON2_REPO="https://github.com/facebookresearch/detectron2"
DETECTRON2_COMMIT="02b5c4e295e990042a714712c21dc79b731e8833"
DETECTRON2_SOURCE="${DETECTRON2_SOURCE:-git+${DETECTRON2_REPO}.git@${DETECTRON2_COMMIT}}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
# nproc alone would honour OMP_NUM_THREADS (often 1 on shared machines) and compile serially
export MAX_JOBS="${MAX_JOBS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/step.log"
PINS="$WORK/pins.txt"  # pip constraints: the torch/torchvision that no later install may replace
: >"$PINS"

elapsed() {
  local seconds=$((SECONDS - $1))
  if ((seconds >= 60)); then printf '%dm%02ds' $((seconds / 60)) $((seconds % 60))
  else printf '%ds' "$seconds"; fi
}

# step WHAT COMMAND...: prints "WHAT ... <time taken>" with COMMAND's output kept in $LOG;
# when COMMAND fails, prints the whole log and returns 1.
step() {
  local what="$1" start=$SECONDS
  shift
  printf '%s ... ' "$what"
  if "$@" >"$LOG" 2>&1; then
    elapsed "$start"
    echo
  else
    echo "FAILED after $(elapsed "$start"); its output:"
    cat "$LOG"
    return 1
  fi
}

pip_install() { "$PYTHON" -m pip install -c "$PINS" "$@"; }

# Sets ACTION, REQUIREMENTS and MESSAGE from dev/setup_torch.py (its warnings shown only if it fails).
torch_decision() {
  local decision
  decision="$("$PYTHON" dev/setup_torch.py decide 2>"$LOG")" || { cat "$LOG" >&2; return 1; }
  { read -r ACTION; read -r REQUIREMENTS; read -r MESSAGE; } <<<"$decision"
}

install_detectron2() {
  local requirement="$DETECTRON2_SOURCE"
  if [ -d "$requirement" ]; then
    # pip builds a local folder in place, where setuptools would reuse a build/ made against
    # another torch: build from a clean copy instead.
    requirement="$WORK/detectron2"
    mkdir "$requirement" &&
      tar -C "$DETECTRON2_SOURCE" --exclude=./.git --exclude=./build --exclude='*.egg-info' \
        --exclude='*.so' -cf - . | tar -C "$requirement" -xf - || return 1
  fi
  pip_install --no-build-isolation "$requirement" && "$PYTHON" -c "import detectron2"
}

command -v "$PYTHON" >/dev/null || { echo "PYTHON=$PYTHON: no such interpreter" >&2; exit 1; }
echo "python: $(command -v "$PYTHON") ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"

# 1. torch + torchvision
torch_decision
case "$ACTION" in
  keep) echo "torch: $MESSAGE" ;;
  refuse) echo "torch: $MESSAGE" >&2; exit 1 ;;
  install)
    if [[ " $REQUIREMENTS " != *" torch=="* ]]; then
      "$PYTHON" dev/setup_torch.py pins >"$PINS"  # only torchvision is added: hold torch
    fi
    step "torch: $MESSAGE (pip)" pip_install $REQUIREMENTS
    torch_decision
    if [ "$ACTION" != keep ]; then
      echo "torch: after installing $REQUIREMENTS: $MESSAGE" >&2
      exit 1
    fi ;;
  *) echo "dev/setup_torch.py decide: unexpected action '$ACTION'" >&2; exit 1 ;;
esac
"$PYTHON" dev/setup_torch.py pins >"$PINS"

# 2. build tools
# setuptools >= 70.1 builds wheels without the separate wheel package
step "build tools: setuptools, ninja (pip)" pip_install "setuptools>=70.1" ninja

# 3. detectron2
if detectron2_version="$("$PYTHON" -c 'import detectron2; print(detectron2.__version__)' 2>/dev/null)"; then
  echo "detectron2: $detectron2_version already installed, kept"
elif ! step "detectron2: building from $DETECTRON2_SOURCE against $(head -n 1 "$PINS") (pip)" \
    install_detectron2; then
  cat >&2 <<EOF
detectron2 could not be installed from $DETECTRON2_SOURCE (pip's output above).
Point DETECTRON2_SOURCE at any pip requirement that works here. Offline machines use a local
checkout of $DETECTRON2_REPO at commit $DETECTRON2_COMMIT:
  git clone $DETECTRON2_REPO detectron2 && git -C detectron2 checkout $DETECTRON2_COMMIT
  DETECTRON2_SOURCE=\$PWD/detectron2 bash dev/run_tests.sh
EOF
  exit 1
fi

# 4. dinov3_m2f and the op
cuda_decision="$("$PYTHON" dev/setup_torch.py cuda-build 2>"$LOG")" || { cat "$LOG" >&2; exit 1; }
read -r FORCE_CUDA cuda_reason <<<"$cuda_decision"
export FORCE_CUDA
if [ "$FORCE_CUDA" = 1 ]; then kernels="CPU + CUDA kernels ($cuda_reason)"
else kernels="CPU kernels only ($cuda_reason)"; fi
op_decision="$("$PYTHON" dev/op_build.py decide 2>"$LOG")" || { cat "$LOG" >&2; exit 1; }
read -r op_action op_message <<<"$op_decision"
if [ "$op_action" = keep ]; then
  echo "dinov3_m2f: $op_message"
else
  step "dinov3_m2f: editable install with dependencies, test, deploy (onnx, onnxruntime, onnxscript) and geo (rasterio) extras, op with $kernels; $op_message (pip)" \
    pip_install --no-build-isolation -e ".[test,deploy,geo]"
  "$PYTHON" dev/op_build.py record
fi

echo "environment (python -m dinov3_m2f.collect_env):"
"$PYTHON" -m dinov3_m2f.collect_env | sed 's/^/  /'

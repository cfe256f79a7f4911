#!/usr/bin/env python3
"""The prepared GPU check: everything the GPU must show, in one call of at most 8 minutes on one
H200 (run it through ``dev/gpu_check.sh``).

Steps, in this order (each runs as its own process with its own log and time limit; a step that
fails is reported and the next one runs):

  build       compile the op for the visible GPU (setup.py build_ext --inplace, FORCE_CUDA=1,
              TORCH_CUDA_ARCH_LIST from nvidia-smi, CUDA_HOME where nvcc and its headers live,
              MAX_JOBS = CPU count) and check that the CUDA kernels are registered
  tests       pytest on the op's test files (CUDA: fp32/fp16/bf16 against fp64, non-default stream,
              CUDA-graph capture, tensors on the wrong device; the CPU tests run too)
  op-512      dev/benchmark_ops.py at the 512x512 shapes (pixel decoder, adapter extractor),
              batch 16, float32 and bfloat16: compiled op, grid_sample reference and, with
              --baseline-ext, the original Deformable-DETR kernel (float32)
  model-vitl  dev/benchmark_head.py: ViT-L/16 (frozen weights in bf16) + adapter + Mask2Former(256),
              as the ADE20K/LoveDA configs; train step at batch 16, 512x512, bf16 autocast;
              whole-image inference at batch 1; peak memory
  model-7b    dev/benchmark_head.py: ViT-7B/16 (frozen weights in bf16) + adapter + official
              DINOv3 head (hidden 2048), inference of one 896x896 window (the eval config's crop)
  op-1024     as op-512 at 1024x1024
  compile     dev/benchmark_compile.py: the speed-up of torch.compile (Inductor, fullgraph: a graph
              break fails the step) on ViT-L/16 + adapter + Mask2Former(256) inference at batch 1,
              512x512, bf16 autocast (what train.compile switches on), eager vs compiled
  d2-vitl     only with --d2-source: dev/benchmark.py with configs/ade20k/m2f_vitl16_lvd1689m_512.py
              (detectron2's trainer and meta-architecture), detectron2 taken from that source tree

The model steps use the plain-PyTorch core and import nothing from detectron2, so the check runs
on a bare GPU image (Python, torch, scipy, pytest) plus the core's pure-Python dependency fvcore
(with iopath, yacs and termcolor), carried as wheels, e.g. prepared here with
``python3 -m pip wheel --no-deps -w .whl fvcore iopath yacs termcolor`` and installed there with
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` + ``PYTHONPATH=/tmp/site``. Targets (issue 13) are checked in the results
file, not by the exit code: the exit code is 1 when a step failed, else 0.

--dry-run runs the same steps on the CPU with tiny shapes and few iterations (about a minute):
the build step only checks that the extension is importable, CUDA tests skip themselves, the
compile step uses the aot_eager backend (Dynamo and AOTAutograd without Inductor's C++ compiler),
and the results file is written the same way; its figures check the plumbing, not speed.

Writes into --out: gpu_results.md (every figure as docs/benchmarks.md rows, the targets with
pass/fail, the step times), gpu_check.log (each step's commands and full output) and
gpu_records.json (the raw figures).

Examples:
    bash dev/gpu_check.sh --out output/gpu_check
    bash dev/gpu_check.sh --dry-run --out /tmp/gpu_check
    bash dev/gpu_check.sh --out "$OUT" --baseline-ext .baseline/build --d2-source .d2src
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_FILE = "gpu_results.md"
LOG_FILE = "gpu_check.log"
RECORDS_FILE = "gpu_records.json"
# The whole check must fit in one 8-minute slice of GPU time.
DEFAULT_TIME_LIMIT_S = 480
# A step is not started with less time than this left.
MIN_STEP_S = 10
# Lines of a failed step's output repeated on stdout.
FAILURE_TAIL_LINES = 25
# Test files of the op; the CUDA tests skip themselves where no GPU is visible.
TEST_FILES = ["tests/layers/test_ms_deform_attn_op.py", "tests/layers/test_ms_deform_attn_module.py"]
# Expected wall time of each step on one H200 and its hard limit, in seconds. Expected: about
# 460 s in all (400 s without d2-vitl), inside DEFAULT_TIME_LIMIT_S; the steps run in this order,
# so a slow start leaves out the last ones (compile, d2-vitl) first.
STEP_TIMES = {
    # nvcc on one .cu file (4 dtypes, one architecture) beside two C++ files, in parallel
    "build": (90, 240),
    # ~60 tests: CPU gradchecks in float64 dominate; the CUDA ones take a few seconds
    "tests": (40, 150),
    # process and CUDA start ~10 s; 10 rows x (3 timings x 23 calls + memory), reference fwd+bwd ~10 ms
    "op-512": (30, 120),
    # building ViT-L + adapter + head on the GPU ~5 s; 13 train steps of ~0.3 s; 13 inferences
    "model-vitl": (45, 150),
    # initialising 6.7e9 parameters on the GPU ~15 s; 7 windows of ~0.3 s
    "model-7b": (60, 180),
    # 4x the tokens of op-512: the reference takes ~40 ms per fwd+bwd
    "op-1024": (45, 120),
    # Dynamo tracing and Inductor/Triton kernels of the ViT-L inference graph on 16 cores ~60 s;
    # 2 x 13 calls of ~30 ms
    "compile": (90, 200),
    # detectron2 builds the model on the CPU (ViT-L init ~20 s), then as model-vitl
    "d2-vitl": (60, 180),
}
# Benchmark settings: batch of the op and training benchmarks; warm-up and timed iterations of
# the op (fast kernels) and of the model (about 0.2-0.5 s per step on an H200).
BATCH = 16
OP_WARMUP, OP_ITERS = 3, 20
MODEL_WARMUP, MODEL_ITERS = 3, 10
# The compile step: the model of model-vitl (a preset of dev/benchmark_compile.py) at 512x512.
COMPILE_MODEL, COMPILE_IMAGE_SIZE = "vitl16", 512
# One window of configs/ade20k/m2f_vit7b16_official_head_eval.py (slide_crop_size).
SEVEN_B_WINDOW = 896
SEVEN_B_WARMUP, SEVEN_B_ITERS = 2, 5
# --dry-run: tiny shapes (multiples of 32), few iterations, and the matching points of the
# tests' tiny detectron2 runs.
DRY_OP_SIZES = (64, 96)
DRY_WARMUP, DRY_OP_ITERS, DRY_MODEL_ITERS = 1, 2, 1
DRY_D2_POINTS = 256
DRY_COMPILE_BACKEND = "aot_eager"
VITL_CONFIG = "configs/ade20k/m2f_vitl16_lvd1689m_512.py"
DRY_D2_CONFIG = "configs/synthetic/m2f_tiny_synthetic.py"
# Packages the detectron2 step needs beyond a bare GPU image (carry them as wheels; the core
# steps need fvcore, iopath, yacs and termcolor of this list too).
D2_MODULES = ["detectron2", "fvcore", "iopath", "omegaconf", "hydra", "yacs", "termcolor", "pycocotools"]
# Run in a child after the build: the extension loads (and, on a GPU, has CUDA kernels).
IMPORT_CHECK = """
import sys, torch
from dinov3_m2f.layers import _extension
_extension.require("dev/gpu_check.py")
op = "dinov3_m2f::ms_deform_attn_forward"
keys = [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(op, k)]
print("dinov3_m2f._C loaded; kernels of", op, "for", keys)
if sys.argv[1] == "cuda" and "CUDA" not in keys:
    sys.exit("the extension has no CUDA kernels: was it built with FORCE_CUDA=1 and CUDA_HOME set?")
"""
GB = 1e9
MIB = 2**20
# Options whose value is a file of this check (left out of the commands shown in the results).
_HIDDEN_OPTIONS = ("--json", "--build-temp", "--build-lib")

# Targets of issue 13: (key, what, comparison, bound).
TARGETS = {
    "op_fwd_vs_original": ("op forward vs original kernel (pixel decoder, float32)", ">=", 2.5),
    "op_bwd_vs_original": ("op backward vs original kernel (pixel decoder, float32)", ">=", 4.0),
    "op_bf16_vs_fp32": ("op fwd+bwd, bfloat16 I/O vs float32", ">=", 1.5),
    "op_vs_reference": ("op fwd+bwd vs grid_sample reference", ">=", 10.0),
    "train_ms": ("ViT-L/16 + adapter + M2F(256) train step, batch 16, 512x512, bf16 (ms)", "<=", 180.0),
    "infer_images_per_s": ("inference, 512x512 whole image, bf16 (images/s)", ">=", 40.0),
    "seven_b_memory_gb": ("ViT-7B/16 + official head inference, peak reserved memory (GB)", "<=", 40.0),
}


@dataclass
class Step:
    """One step of the check: commands run in order, stopping at the first failure."""

    name: str
    kind: str  # "build", "tests", "op", "model", "compile" (core) or "d2" (detectron2): how to read its records
    what: str
    commands: List[List[str]]
    env: Dict[str, str] = field(default_factory=dict)
    records: Optional[str] = None  # JSON (or JUnit XML) file its last command writes
    precondition_error: Optional[str] = None  # set when the step cannot run at all
    status: str = "not run"
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def budget_s(self) -> float:
        """Expected wall time on one H200."""
        return STEP_TIMES[self.name][0]

    @property
    def timeout_s(self) -> float:
        return STEP_TIMES[self.name][1]


@dataclass
class Context:
    args: argparse.Namespace
    work: str  # temporary folder for the steps' record files
    machine: str
    torch_version: str
    cuda: str
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (plumbing check)")
    parser.add_argument("--out", default=os.path.join("output", "gpu_check"),
                        help="folder for the results file, the log and the raw records")
    parser.add_argument("--baseline-ext", metavar="DIR",
                        help="folder holding a built original MultiScaleDeformableAttention extension")
    parser.add_argument("--d2-source", metavar="DIR",
                        help="detectron2 source tree (holding detectron2/) for the d2-vitl step")
    parser.add_argument("--steps", nargs="+", metavar="STEP",
                        help="run only these steps (default: all); names as listed above")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                        help="seconds for the whole check; steps that would start later are not run")
    args = parser.parse_args(argv)
    for name in ("baseline_ext", "d2_source", "out"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    if args.baseline_ext and not os.path.isdir(args.baseline_ext):
        parser.error(f"--baseline-ext {args.baseline_ext}: not a folder")
    if args.d2_source and not os.path.isdir(os.path.join(args.d2_source, "detectron2")):
        parser.error(f"--d2-source {args.d2_source}: no detectron2/ package folder in it")
    return args


# ---------------------------------------------------------------------------------------------
# The machine


def _run_text(command: List[str]) -> Optional[str]:
    """stdout of a short command, or None when it is missing or fails."""
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit root that holds both ``bin/nvcc`` and ``include/cuda_runtime.h``.

    Tries ``$CUDA_HOME``, ``$CUDA_PATH``, ``/usr/local/cuda`` and the folder above the ``nvcc`` on
    the PATH (on some machines that folder has no headers; torch would pick it anyway).
    """
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in filter(None, candidates):
        if os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
            os.path.join(root, "include", "cuda_runtime.h")
        ):
            return root
    return None


def gpu_facts() -> Optional[Dict[str, str]]:
    """Name, memory, driver and compute capability of GPU 0 from nvidia-smi (None: no GPU)."""
    fields = ["name", "memory.total", "driver_version", "compute_cap"]
    out = _run_text(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if not out or not out.strip():
        return None
    return dict(zip(fields, (cell.strip() for cell in out.strip().splitlines()[0].split(","))))


def describe() -> Tuple[str, str, Optional[Dict[str, str]]]:
    """(machine, CUDA versions, GPU facts) for the table rows."""
    cpu = f"{os.cpu_count()}-core {platform.machine()} CPU"
    gpu = gpu_facts()
    if gpu:
        machine = f"{gpu['name']} ({gpu['memory.total']}, driver {gpu['driver_version']}), {cpu}"
    else:
        machine = f"{cpu}, no GPU"
    cuda_home = find_cuda_home()
    nvcc_out = _run_text([os.path.join(cuda_home, "bin", "nvcc"), "--version"]) if cuda_home else None
    nvcc = next((line.split("release")[1].split(",")[0].strip()
                 for line in (nvcc_out or "").splitlines() if "release" in line), "not found")
    cuda = f"{torch.version.cuda or 'none'} (torch build), nvcc {nvcc}"
    return machine, cuda, gpu


# ---------------------------------------------------------------------------------------------
# The steps


def _python(*argv: str) -> List[str]:
    return [sys.executable, *argv]


def build_steps(ctx: Context, gpu: Optional[Dict[str, str]]) -> List[Step]:
    """The steps of this run (GPU shapes, or tiny CPU shapes with --dry-run)."""
    args, dry = ctx.args, ctx.args.dry_run
    device = "cpu" if dry else "cuda"

    def json_path(name: str) -> str:
        return os.path.join(ctx.work, f"{name}.json")

    # ninja (a pip package) lives beside the interpreter: put it on the PATH for a parallel build.
    build_env = {"FORCE_CUDA": "1", "MAX_JOBS": str(os.cpu_count()),
                 "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    cuda_home = find_cuda_home()
    if cuda_home:
        build_env["CUDA_HOME"] = cuda_home
    if gpu and gpu.get("compute_cap"):
        build_env["TORCH_CUDA_ARCH_LIST"] = gpu["compute_cap"]
    build_command = _python("setup.py", "build_ext", "--inplace", "--build-temp", os.path.join(ctx.work, "build"),
                            "--build-lib", os.path.join(ctx.work, "lib"))
    build_what = " ".join(f"{k}={v}" for k, v in build_env.items() if k != "PATH") + " " + display(build_command)
    if dry:
        build = Step("build", "build", f"dry run: import check only (on a GPU: {build_what})",
                     [_python("-c", IMPORT_CHECK, "cpu")])
    else:
        build = Step("build", "build", build_what, [build_command, _python("-c", IMPORT_CHECK, "cuda")],
                     env=build_env, precondition_error=None if cuda_home else
                     "no CUDA toolkit with bin/nvcc and include/cuda_runtime.h found (set CUDA_HOME)")

    junit = os.path.join(ctx.work, "tests.xml")
    tests = Step("tests", "tests", "pytest on the op's test files (CUDA tests skip without a GPU)",
                 [_python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={junit}",
                          *TEST_FILES)], records=junit)

    def op_step(size_gpu: int, size_dry: int) -> Step:
        name = f"op-{size_gpu}"
        baseline = ["baseline", "--baseline-ext", args.baseline_ext] if args.baseline_ext else []
        if dry:
            size, batch, run_args = size_dry, 1, ["--warmup", str(DRY_WARMUP), "--iters", str(DRY_OP_ITERS),
                                                  "--skip-unsupported"]
        else:
            size, batch, run_args = size_gpu, BATCH, ["--warmup", str(OP_WARMUP), "--iters", str(OP_ITERS)]
        return Step(name, "op", f"op benchmark at the {size}x{size} shapes, batch {batch}, float32 and bfloat16",
                    [_python("dev/benchmark_ops.py", "--device", device, "--input-size", str(size),
                             "--batch-size", str(batch), "--dtype", "float32", "bfloat16",
                             "--impls", "compiled", "pytorch", *baseline, *run_args, "--json", json_path(name))],
                    records=json_path(name))

    def head_step(name: str, what: str, model_args: List[str], gpu_args: List[str]) -> Step:
        size_args = (["--tiny", "--warmup", str(DRY_WARMUP), "--iters", str(DRY_MODEL_ITERS)] if dry
                     else gpu_args)
        return Step(name, "model", what,
                    [_python("dev/benchmark_head.py", *model_args, *size_args, "--device", device,
                             "--json", json_path(name))], records=json_path(name))

    vitl = head_step(
        "model-vitl", "ViT-L/16 + adapter + M2F(256) (core): train step and whole-image inference",
        ["--backbone", "vitl16", "--head", "m2f", "--dtype", "bf16", "--frozen-dtype", "bf16"],
        ["--image-size", "512", "--batch-size", str(BATCH), "--infer-batch-size", "1",
         "--warmup", str(MODEL_WARMUP), "--iters", str(MODEL_ITERS)])
    seven_b = head_step(
        "model-7b", "ViT-7B/16 (bf16 weights) + adapter + official head (core): inference memory and speed",
        ["--backbone", "vit7b16", "--head", "official", "--dtype", "bf16", "--frozen-dtype", "bf16",
         "--skip-train"],
        ["--image-size", str(SEVEN_B_WINDOW), "--infer-batch-size", "1", "--warmup", str(SEVEN_B_WARMUP),
         "--iters", str(SEVEN_B_ITERS)])
    compile_args = (["--model", "tiny", "--image-size", str(DRY_OP_SIZES[0]), "--backend", DRY_COMPILE_BACKEND,
                     "--warmup", str(DRY_WARMUP), "--iters", str(DRY_MODEL_ITERS)] if dry else
                    ["--model", COMPILE_MODEL, "--image-size", str(COMPILE_IMAGE_SIZE), "--backend", "inductor",
                     "--warmup", str(MODEL_WARMUP), "--iters", str(MODEL_ITERS)])
    compile_step = Step(
        "compile", "compile", "torch.compile speed-up (eager vs compiled) of the ViT-L model's inference (core)",
        [_python("dev/benchmark_compile.py", *compile_args, "--mode", "infer", "--batch-size", "1", "--amp", "bf16",
                 "--device", device, "--json", json_path("compile"))], records=json_path("compile"))
    steps = [build, tests, op_step(512, DRY_OP_SIZES[0]), vitl, seven_b, op_step(1024, DRY_OP_SIZES[1]),
             compile_step]

    if args.d2_source:
        if dry:
            d2_args = ["--config-file", DRY_D2_CONFIG, "--batch-size", "1", "--input-size", "64", "64",
                       "--warmup", str(DRY_WARMUP), "--iters", str(DRY_MODEL_ITERS),
                       "--opts", f"model.criterion.num_points={DRY_D2_POINTS}"]
        else:
            d2_args = ["--config-file", VITL_CONFIG, "--batch-size", str(BATCH), "--input-size", "512", "512",
                       "--warmup", str(MODEL_WARMUP), "--iters", str(MODEL_ITERS),
                       "--opts", "model.backbone.weights=null", "model.test_mode=whole"]
        d2_check = "import importlib; [importlib.import_module(m) for m in %r]" % D2_MODULES
        steps.append(Step(
            "d2-vitl", "d2", "dev/benchmark.py (detectron2 trainer and meta-architecture) on the ViT-L config",
            [_python("-c", d2_check),
             _python("dev/benchmark.py", "--device", device, "--amp", "bf16", "--date", ctx.date,
                     "--json", json_path("d2-vitl"), *d2_args)],
            env={"PYTHONPATH": args.d2_source}, records=json_path("d2-vitl")))
    if args.steps:
        unknown = sorted(set(args.steps) - {s.name for s in steps})
        if unknown:
            raise SystemExit(f"--steps: unknown step(s) {unknown}; this run has {[s.name for s in steps]}")
        steps = [s for s in steps if s.name in args.steps]
    return steps


def display(command: List[str]) -> str:
    """A command as a reader would type it: ``python3``, paths relative to the repo, without the
    check's own record files."""
    shown, skip_next = [], False
    for arg in command:
        if skip_next or arg.startswith("--junitxml="):
            skip_next = False
            continue
        if arg in _HIDDEN_OPTIONS:
            skip_next = True
            continue
        if arg == sys.executable:
            arg = "python3"
        elif "\n" in arg:
            arg = "<inline check>"
        shown.append(os.path.relpath(arg, REPO) if arg.startswith(REPO + os.sep) else arg)
    return shlex.join(shown)


def _child_env(step: Step) -> Dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [step.env["PYTHONPATH"]] if "PYTHONPATH" in step.env else []
    paths += [os.path.join(REPO, "projects"), os.environ.get("PYTHONPATH", "")]
    env.update({k: v for k, v in step.env.items() if k != "PYTHONPATH"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def run_step(step: Step, *, deadline: float, log) -> None:
    """Run the step, appending its output to ``log``; sets its status and wall time."""
    start = time.monotonic()
    log.write(f"\n===== step {step.name}: {step.what}\n")
    log.flush()
    if step.precondition_error:
        step.status = f"failed: {step.precondition_error}"
    else:
        step.status = _run_commands(step, start=start, deadline=deadline, log=log)
    step.wall_s = time.monotonic() - start
    log.write(f"===== step {step.name}: {step.status} in {step.wall_s:.1f} s\n")
    log.flush()


def _run_commands(step: Step, *, start: float, deadline: float, log) -> str:
    """Run the step's commands in order; returns the step's status."""
    for command in step.commands:
        left = min(step.timeout_s - (time.monotonic() - start), deadline - time.monotonic())
        if left < MIN_STEP_S:
            return "stopped: time limit"
        log.write(f"$ {display(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=REPO, env=_child_env(step), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group this step started
            proc.wait()
            return f"timed out after {time.monotonic() - start:.0f} s"
        if code != 0:
            return f"failed (exit code {code})"
    return "ok"


# ---------------------------------------------------------------------------------------------
# Figures and targets


def load_records(step: Step) -> List[Dict]:
    """The step's JSON records ([] when it wrote none)."""
    if not step.records or not step.records.endswith(".json") or not os.path.isfile(step.records):
        return []
    with open(step.records) as f:
        return [dict(r, step=step.name, kind=step.kind) for r in json.load(f)]


def test_counts(step: Step) -> Optional[Dict]:
    """Counts and skip reasons of the tests step's JUnit XML (None when it wrote none)."""
    if not step.records or not os.path.isfile(step.records):
        return None
    try:
        suites = ET.parse(step.records).getroot()
    except ET.ParseError:  # pytest was killed while writing it: the step's status says so
        return None
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    counts = Counter()
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            counts[key] += int(suite.get(key, 0))
    reasons = Counter(s.get("message", "") for s in suites[0].iter("skipped")) if suites else Counter()
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return dict(counts, skip_reasons=dict(reasons))


def _judge(key: str, value: Optional[float], dry: bool) -> Tuple[str, str]:
    """(target cell, result cell) of a target."""
    _, op, bound = TARGETS[key]
    target = f"{'≥' if op == '>=' else '≤'} {bound:g}"
    if value is None:
        return target, "not measured"
    ok = value >= bound if op == ">=" else value <= bound
    return target, ("dry run: " if dry else "") + ("pass" if ok else "FAIL")


def target_rows(records: List[Dict], tests: Optional[Dict], dry: bool, baseline: bool) -> List[List[str]]:
    """[figure, value, target, result] rows of every target the measured records allow."""
    rows = []

    def add(key, label, value, shown):
        target, result = _judge(key, value, dry)
        if value is None and key.endswith("vs_original") and not baseline:
            result = "not measured (no --baseline-ext)"
        rows.append([f"{TARGETS[key][0]}: {label}" if label else TARGETS[key][0], shown, target, result])

    op = {(r["impl"], r["shape"], r["dtype"], r["input_size"]): r for r in records
          if r["kind"] == "op" and "error" not in r}
    sizes = sorted({k[3] for k in op})
    shapes = sorted({k[1] for k in op})
    for size in sizes:
        ours = op.get(("compiled", "pixel-decoder", "float32", size))
        orig = op.get(("baseline", "pixel-decoder", "float32", size))
        for key, field_ in (("op_fwd_vs_original", "forward_ms"), ("op_bwd_vs_original", "backward_ms")):
            ratio = orig[field_] / ours[field_] if ours and orig else None
            add(key, f"{size}x{size}", ratio,
                f"{ratio:.2f}x ({ours[field_]:.3f} vs {orig[field_]:.3f} ms)" if ratio else "–")
        for shape in shapes:
            fp32, bf16 = op.get(("compiled", shape, "float32", size)), op.get(("compiled", shape, "bfloat16", size))
            ratio = fp32["forward_backward_ms"] / bf16["forward_backward_ms"] if fp32 and bf16 else None
            add("op_bf16_vs_fp32", f"{shape}, {size}x{size}", ratio,
                f"{ratio:.2f}x ({bf16['forward_backward_ms']:.3f} vs {fp32['forward_backward_ms']:.3f} ms)"
                if ratio else "–")
            for dtype in ("float32", "bfloat16"):
                ours, ref = op.get(("compiled", shape, dtype, size)), op.get(("pytorch", shape, dtype, size))
                ratio = ref["forward_backward_ms"] / ours["forward_backward_ms"] if ours and ref else None
                add("op_vs_reference", f"{shape}, {dtype}, {size}x{size}", ratio,
                    f"{ratio:.1f}x ({ours['forward_backward_ms']:.3f} vs {ref['forward_backward_ms']:.3f} ms)"
                    if ratio else "–")

    def model(step, mode):
        return next((r for r in records if r.get("step") == step and r.get("mode") == mode), None)

    train, infer, seven_b = model("model-vitl", "train"), model("model-vitl", "infer"), model("model-7b", "infer")
    add("train_ms", "core", train and train["ms_per_iter"], f"{train['ms_per_iter']:.1f} ms" if train else "–")
    add("infer_images_per_s", "core, batch 1", infer and infer["images_per_s"],
        f"{infer['images_per_s']:.1f} images/s" if infer else "–")
    d2 = next((r for r in records if r["kind"] == "d2"), None)
    if d2:
        if "train_ms_per_iter" in d2:
            add("train_ms", "detectron2 trainer, config", d2["train_ms_per_iter"],
                f"{d2['train_ms_per_iter']:.1f} ms")
        add("infer_images_per_s", "detectron2 meta-architecture, config", d2["infer_images_per_s"],
            f"{d2['infer_images_per_s']:.1f} images/s")
    gb = seven_b and seven_b["reserved_mib"] * MIB / GB
    add("seven_b_memory_gb", f"{SEVEN_B_WINDOW}x{SEVEN_B_WINDOW} window" if not dry else "tiny model", gb,
        f"{gb:.1f} GB reserved ({seven_b['peak_mib'] * MIB / GB:.1f} GB allocated), "
        f"{seven_b['images_per_s']:.2f} windows/s" if seven_b else "–")
    if tests is not None:
        ok = tests["failures"] == 0 and tests["errors"] == 0 and tests["tests"] > 0
        rows.append(["op tests (CUDA where a GPU is visible)", _format_tests(tests), "all pass",
                     ("dry run: " if dry else "") + ("pass" if ok else "FAIL")])
    return rows


def _format_tests(tests: Dict) -> str:
    reasons = "; ".join(f"{n}x {reason}" for reason, n in tests["skip_reasons"].items())
    return (f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
            f"{tests['skipped']} skipped" + (f" ({reasons})" if reasons else ""))


def _figure(record: Dict, key: str, fmt: str) -> str:
    return format(record[key], fmt) if key in record else "–"


def _op_row(r: Dict) -> List[str]:
    if "error" in r:
        figures = [r["error"], "", "", ""]
    else:
        figures = [_figure(r, "forward_ms", ".3f"), _figure(r, "backward_ms", ".3f"),
                   _figure(r, "forward_backward_ms", ".3f"), _figure(r, "peak_mib", ".1f")]
    return [r["impl"], r["dtype"], r["shape"], f"{r['input_size']}x{r['input_size']}", r["batch"], r["queries"],
            r["values"], f"{r['heads']} x {r['channels']}", r["levels"], r["points"], *figures]


def _model_rows(records: List[Dict]) -> List[Tuple[str, List[str]]]:
    """(step name, table row) of each model figure set; a detectron2 record gives two rows."""
    rows = []
    for r in records:
        if r["kind"] == "d2":
            if "train_ms_per_iter" in r:
                rows.append((r["step"], [r["config"], "train (detectron2)", r["input"], r["batch"], r["amp"],
                                         r["frozen_dtype"], _figure(r, "train_ms_per_iter", ".1f"), "",
                                         _figure(r, "train_peak_mib", ".0f"), _figure(r, "train_reserved_mib", ".0f")]))
            rows.append((r["step"], [r["config"], "infer (detectron2)", r["input"], r["batch"], r["amp"],
                                     r["frozen_dtype"], "", _figure(r, "infer_images_per_s", ".2f"),
                                     _figure(r, "infer_peak_mib", ".0f"), _figure(r, "infer_reserved_mib", ".0f")]))
        else:
            size = r["image_size"]
            rows.append((r["step"], [r["model"], r["mode"], f"{size}x{size}", r["batch"], r["amp"], r["frozen_dtype"],
                                     _figure(r, "ms_per_iter", ".1f"), _figure(r, "images_per_s", ".2f"),
                                     _figure(r, "peak_mib", ".0f"), _figure(r, "reserved_mib", ".0f")]))
    return rows


def write_results(ctx: Context, steps: List[Step], *, total_s: float) -> Tuple[List[List[str]], int]:
    """Write the results file and the raw records; returns the target rows and failed steps."""
    dry = ctx.args.dry_run
    by_step = {s.name: s for s in steps}
    records = [r for s in steps for r in load_records(s)]
    tests = test_counts(by_step["tests"]) if "tests" in by_step else None
    targets = target_rows(records, tests, dry, bool(ctx.args.baseline_ext))
    failed = sum(1 for s in steps if not s.ok)
    prefix = [ctx.date, ctx.machine, ctx.torch_version, ctx.cuda]
    prefix_header = ["date", "machine", "torch", "CUDA", "command"]

    def command_of(step_name: str) -> str:
        step = by_step.get(step_name)
        return f"`{display(step.commands[-1])}`" if step else ""

    # Imported only now, after the build step: the package loads the extension, which the
    # in-place build must not overwrite while this process has it mapped.
    from dinov3_m2f.benchmarking import markdown_table
    from dinov3_m2f.atomic_files import atomic_open

    lines = [
        f"# GPU check{' (dry run)' if dry else ''}: {ctx.date}",
        "",
        f"- machine: {ctx.machine}",
        f"- torch {ctx.torch_version}, CUDA {ctx.cuda}",
        f"- command: `{display([sys.executable] + sys.argv)}`",
        f"- steps: {len(steps) - failed} ok, {failed} failed or not finished; wall time {total_s:.0f} s "
        f"(limit {ctx.args.time_limit:.0f} s)",
    ]
    if dry:
        lines.append("- dry run: tiny shapes on the CPU; the figures check the plumbing, not speed or targets")
    lines += ["", "## Targets (issue 13)", "",
              markdown_table(prefix_header + ["figure", "value", "target", "result"],
                             [prefix + [""] + row for row in targets])]
    op_records = [r for r in records if r["kind"] == "op"]
    if op_records:
        lines += ["", "## MSDeformAttn op (`dev/benchmark_ops.py`)", "",
                  "Median ms; fwd under no_grad, bwd = backward alone, fwd+bwd = both; peak = extra memory "
                  "of one forward and one forward+backward over the inputs.", "",
                  markdown_table(prefix_header + ["impl", "dtype", "shape", "input", "B", "Q", "S", "heads x C",
                                                  "L", "P", "fwd ms", "bwd ms", "fwd+bwd ms", "peak MiB"],
                                 [prefix + [command_of(r["step"])] + _op_row(r) for r in op_records])]
    model_records = [r for r in records if r["kind"] in ("model", "d2")]
    if model_records:
        lines += ["", "## Model (`dev/benchmark_head.py`: core, no detectron2; `dev/benchmark.py`: detectron2)",
                  "", "Mean ms per training step or inference batch; peak = CUDA max allocated (CPU: peak "
                  "RSS) during the timed runs, weights included; reserved = CUDA max reserved.", "",
                  markdown_table(prefix_header + ["model", "mode", "input", "batch", "amp", "frozen ViT",
                                                  "ms/iter", "images/s", "peak MiB", "reserved MiB"],
                                 [prefix + [command_of(step)] + row for step, row in _model_rows(model_records)])]
    compile_records = [r for r in records if r["kind"] == "compile"]
    if compile_records:
        lines += ["", "## torch.compile (`dev/benchmark_compile.py`: core, no detectron2)", "",
                  "Median ms per inference batch, eager and compiled; first call = the compiling call.", "",
                  markdown_table(prefix_header + ["model", "mode", "input", "batch", "amp", "backend", "first call s",
                                                  "eager ms", "compiled ms", "speed-up", "max abs pred_masks diff"],
                                 [prefix + [command_of(r["step"]), r["model"], r["mode"],
                                            f"{r['image_size']}x{r['image_size']}", r["batch"], r["amp"], r["backend"],
                                            f"{r['first_call_s']:.0f}", f"{r['eager_ms']:.1f}",
                                            f"{r['compiled_ms']:.1f}", f"{r['speedup']:.2f}x",
                                            "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"]
                                  for r in compile_records])]
    if tests is not None:
        lines += ["", "## Tests", "", markdown_table(prefix_header + ["result"],
                                                    [prefix + [command_of("tests"), _format_tests(tests)]])]
    lines += ["", "## Steps", "",
              markdown_table(["step", "what", "status", "wall s", "budget s (H200)", "limit s"],
                             [[s.name, s.what, s.status, f"{s.wall_s:.1f}", f"{s.budget_s:.0f}", f"{s.timeout_s:.0f}"]
                              for s in steps]),
              "", f"Full output of every step: `{LOG_FILE}`; raw figures: `{RECORDS_FILE}`.", ""]
    # Replaced whole after every step, so a check killed at its time limit leaves whole files.
    with atomic_open(os.path.join(ctx.args.out, RESULTS_FILE), "w") as f:
        f.write("\n".join(lines))
    with atomic_open(os.path.join(ctx.args.out, RECORDS_FILE), "w") as f:
        json.dump(dict(records=records, tests=tests), f, indent=1)
    return targets, failed


def _print_failure_tail(log_path: str, step: Step) -> None:
    with open(log_path) as f:
        text = f.read()
    section = text[text.rfind(f"===== step {step.name}: {step.what}"):]
    print("\n".join(section.splitlines()[-FAILURE_TAIL_LINES:]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    deadline = start + args.time_limit
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); use --dry-run "
              "to rehearse on the CPU", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    machine, cuda, gpu = describe()
    log_path = os.path.join(args.out, LOG_FILE)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work, open(log_path, "w") as log:
        ctx = Context(args=args, work=work, machine=machine, torch_version=torch.__version__, cuda=cuda)
        steps = build_steps(ctx, gpu)
        print(f"gpu_check{' --dry-run' if args.dry_run else ''}: {machine}; torch {ctx.torch_version}; CUDA {cuda}")
        for step in steps:
            run_step(step, deadline=deadline, log=log)
            print(f"[gpu_check] {step.name:<11} {step.status:<28} {step.wall_s:6.1f} s "
                  f"(budget {step.budget_s:.0f} s on an H200)", flush=True)
            if not step.ok:
                _print_failure_tail(log_path, step)
            write_results(ctx, steps, total_s=time.monotonic() - start)
        targets, failed = write_results(ctx, steps, total_s=time.monotonic() - start)
    for row in targets:
        print(f"  {row[3]:<12} {row[0]}: {row[1]} (target {row[2]})")
    print(f"gpu_check: {len(steps) - failed}/{len(steps)} steps ok in {time.monotonic() - start:.0f} s; "
          f"results in {os.path.join(args.out, RESULTS_FILE)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The steps of the GPU check (``dev/gpu_check.py``): what each one runs, with which shapes on a GPU
and in a dry run, and its expected time on one H200."""
import argparse
import datetime
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Test files of the op; the CUDA tests skip themselves where no GPU is visible.
TEST_FILES = ["tests/layers/test_ms_deform_attn_op.py", "tests/layers/test_ms_deform_attn_module.py"]
# Expected wall time of each step on one H200 and its hard limit, in seconds. Expected: about
# 460 s in all (400 s without d2-vitl), inside gpu_check.DEFAULT_TIME_LIMIT_S; the steps run in this order,
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
# The compile step: the model of model-vitl (a preset of dev/benchmark.py compile) at 512x512.
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
# steps need none of them).
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
# Options whose value is a file of this check (left out of the commands shown in the results).
_HIDDEN_OPTIONS = ("--json", "--build-temp", "--build-lib")


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
    """What the steps and the results file need to know of this run."""

    args: argparse.Namespace
    work: str  # temporary folder for the steps' record files
    machine: str
    torch_version: str
    cuda: str
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())


def run_text(command: List[str]) -> Optional[str]:
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
                    [_python("dev/benchmark.py", "ops", "--device", device, "--input-size", str(size),
                             "--batch-size", str(batch), "--dtype", "float32", "bfloat16",
                             "--impls", "compiled", "pytorch", *baseline, *run_args, "--json", json_path(name))],
                    records=json_path(name))

    def head_step(name: str, what: str, model_args: List[str], gpu_args: List[str]) -> Step:
        size_args = (["--tiny", "--warmup", str(DRY_WARMUP), "--iters", str(DRY_MODEL_ITERS)] if dry
                     else gpu_args)
        return Step(name, "model", what,
                    [_python("dev/benchmark.py", "head", *model_args, *size_args, "--device", device,
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
        [_python("dev/benchmark.py", "compile", *compile_args, "--mode", "infer", "--batch-size", "1", "--amp", "bf16",
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
            "d2-vitl", "d2", "dev/benchmark.py config (detectron2 trainer and meta-architecture) on the ViT-L config",
            [_python("-c", d2_check),
             _python("dev/benchmark.py", "config", "--device", device, "--amp", "bf16", "--date", ctx.date,
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

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
  op-512      dev/benchmark.py ops at the 512x512 shapes (pixel decoder, adapter extractor),
              batch 16, float32 and bfloat16: compiled op, grid_sample reference and, with
              --baseline-ext, the original Deformable-DETR kernel (float32)
  model-vitl  dev/benchmark.py head: ViT-L/16 (frozen weights in bf16) + adapter + Mask2Former(256),
              as the ADE20K/LoveDA configs; train step at batch 16, 512x512, bf16 autocast;
              whole-image inference at batch 1; peak memory
  model-7b    dev/benchmark.py head: ViT-7B/16 (frozen weights in bf16) + adapter + official
              DINOv3 head (hidden 2048), inference of one 896x896 window (the eval config's crop)
  op-1024     as op-512 at 1024x1024
  compile     dev/benchmark.py compile: the speed-up of torch.compile (Inductor, fullgraph: a graph
              break fails the step) on ViT-L/16 + adapter + Mask2Former(256) inference at batch 1,
              512x512, bf16 autocast (what train.compile switches on), eager vs compiled
  d2-vitl     only with --d2-source: dev/benchmark.py config with configs/ade20k/m2f_vitl16_lvd1689m_512.py
              (detectron2's trainer and meta-architecture), detectron2 taken from that source tree

The model steps use the plain-PyTorch core and import nothing from detectron2 or fvcore, so the
check runs on a bare GPU image (Python, torch, scipy, pytest). The d2-vitl step needs detectron2's
pure-Python dependencies too (``D2_MODULES`` of dev/gpu_check_steps.py), carried as wheels, e.g.
prepared here with ``python3 -m pip wheel --no-deps -w .whl fvcore iopath yacs termcolor ...``
and installed there with ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` +
``PYTHONPATH=/tmp/site``.
Targets are checked in the results file, not by the exit code: the exit code is 1 when a step
failed, else 0.

--dry-run runs the same steps on the CPU with tiny shapes and few iterations (about a minute):
the build step only checks that the extension is importable, CUDA tests skip themselves, the
compile step uses the aot_eager backend (Dynamo and AOTAutograd without Inductor's C++ compiler),
and the results file is written the same way; its figures check the plumbing, not speed.

The steps are defined in dev/gpu_check_steps.py; the results are judged and written by
dev/gpu_check_results.py. Writes into --out: gpu_results.md (every figure as docs/benchmarks.md
rows, the targets with pass/fail, the step times), gpu_check.log (each step's commands and full output) and
gpu_records.json (the raw figures).

Examples:
    bash dev/gpu_check.sh --out output/gpu_check
    bash dev/gpu_check.sh --dry-run --out /tmp/gpu_check
    bash dev/gpu_check.sh --out "$OUT" --baseline-ext .baseline/build --d2-source .d2src
"""
import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence, Tuple

import torch

from gpu_check_results import LOG_FILE, RESULTS_FILE, write_results
from gpu_check_steps import REPO, STEP_TIMES, Context, Step, run_text, build_steps, display, find_cuda_home

# The whole check must fit in one 8-minute slice of GPU time.
DEFAULT_TIME_LIMIT_S = 480
# A step is not started with less time than this left.
MIN_STEP_S = 10
# Lines of a failed step's output repeated on stdout.
FAILURE_TAIL_LINES = 25


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
                        help=f"run only these steps (default: all): {', '.join(STEP_TIMES)}")
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


def gpu_facts() -> Optional[Dict[str, str]]:
    """Name, memory, driver and compute capability of GPU 0 from nvidia-smi (None: no GPU)."""
    fields = ["name", "memory.total", "driver_version", "compute_cap"]
    out = run_text(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if not out or not out.strip():
        return None
    return dict(zip(fields, (cell.strip() for cell in out.strip().splitlines()[0].split(","))))


def describe() -> Tuple[str, str, Optional[Dict[str, str]]]:
    """(machine with its load average when the check starts, CUDA versions, GPU facts) for the
    table rows."""
    cpu = f"{os.cpu_count()}-core {platform.machine()} CPU"
    gpu = gpu_facts()
    if gpu:
        machine = f"{gpu['name']} ({gpu['memory.total']}, driver {gpu['driver_version']}), {cpu}"
    else:
        machine = f"{cpu}, no GPU"
    # as dinov3_m2f.benchmarking.load_average, which is not imported before the build step
    machine += ", load " + " ".join(f"{load:.2f}" for load in os.getloadavg())
    cuda_home = find_cuda_home()
    nvcc_out = run_text([os.path.join(cuda_home, "bin", "nvcc"), "--version"]) if cuda_home else None
    nvcc = next((line.split("release")[1].split(",")[0].strip()
                 for line in (nvcc_out or "").splitlines() if "release" in line), "not found")
    cuda = f"{torch.version.cuda or 'none'} (torch build), nvcc {nvcc}"
    return machine, cuda, gpu


# ---------------------------------------------------------------------------------------------
# Running the steps


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

"""The results of the GPU check (``dev/gpu_check.py``): the steps' records read back, the targets
judged, and the results file (Markdown tables in the form of docs/benchmarks.md) and raw records
written."""
import json
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Dict, List, Optional, Tuple

from gpu_check_steps import SEVEN_B_WINDOW, Context, Step, display

RESULTS_FILE = "gpu_results.md"
LOG_FILE = "gpu_check.log"
RECORDS_FILE = "gpu_records.json"
GB = 1e9
MIB = 2**20
# The targets the GPU figures are judged by: (key, what, comparison, bound).
TARGETS = {
    "op_fwd_vs_original": ("op forward vs original kernel (pixel decoder, float32)", ">=", 2.5),
    "op_bwd_vs_original": ("op backward vs original kernel (pixel decoder, float32)", ">=", 4.0),
    "op_bf16_vs_fp32": ("op fwd+bwd, bfloat16 I/O vs float32", ">=", 1.5),
    "op_vs_reference": ("op fwd+bwd vs grid_sample reference", ">=", 10.0),
    "train_ms": ("ViT-L/16 + adapter + M2F(256) train step, batch 16, 512x512, bf16 (ms)", "<=", 180.0),
    "infer_images_per_s": ("inference, 512x512 whole image, bf16 (images/s)", ">=", 40.0),
    "seven_b_memory_gb": ("ViT-7B/16 + official head inference, peak reserved memory (GB)", "<=", 40.0),
}


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
    lines += ["", "## Targets", "",
              markdown_table(prefix_header + ["figure", "value", "target", "result"],
                             [prefix + [""] + row for row in targets])]
    op_records = [r for r in records if r["kind"] == "op"]
    if op_records:
        lines += ["", "## MSDeformAttn op (`dev/benchmark.py ops`)", "",
                  "Median ms; fwd under no_grad, bwd = backward alone, fwd+bwd = both; peak = extra memory "
                  "of one forward and one forward+backward over the inputs.", "",
                  markdown_table(prefix_header + ["impl", "dtype", "shape", "input", "B", "Q", "S", "heads x C",
                                                  "L", "P", "fwd ms", "bwd ms", "fwd+bwd ms", "peak MiB"],
                                 [prefix + [command_of(r["step"])] + _op_row(r) for r in op_records])]
    model_records = [r for r in records if r["kind"] in ("model", "d2")]
    if model_records:
        lines += ["", "## Model (`dev/benchmark.py head`: core, no detectron2; `dev/benchmark.py config`: detectron2)",
                  "", "Mean ms per training step or inference batch; peak = CUDA max allocated (CPU: peak "
                  "RSS) during the timed runs, weights included; reserved = CUDA max reserved.", "",
                  markdown_table(prefix_header + ["model", "mode", "input", "batch", "amp", "frozen ViT",
                                                  "ms/iter", "images/s", "peak MiB", "reserved MiB"],
                                 [prefix + [command_of(step)] + row for step, row in _model_rows(model_records)])]
    compile_records = [r for r in records if r["kind"] == "compile"]
    if compile_records:
        lines += ["", "## torch.compile (`dev/benchmark.py compile`: core, no detectron2)", "",
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

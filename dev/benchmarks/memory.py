"""CPU memory of the big-backbone paths, each measured in a fresh process
(``python dev/benchmark.py memory MODE``).

Modes:
  load   Writes random-weight checkpoints of real preset sizes to --workdir (Meta ``.pth``, Meta
         ``.safetensors``, a sharded Hugging Face directory), then builds each one with
         ``build_frozen_dinov3`` (meta device, tensor-by-tensor load) in every --dtypes, and
         prints the peak memory against the size of the weights, plus what it implies for ViT-7B.
         ``--eager`` measures ``build_dinov3`` + ``load_dinov3_weights`` instead, which also
         exists in older versions (run with their ``projects/`` on PYTHONPATH for a before/after).
         ``--page-release on off`` measures each case with and without the loader's release of
         the file pages it has copied (one fresh process each, in turn).
  slide  One frame (default 1024x2048, Cityscapes) through ViT-S/16 + adapter + Mask2Former
         (hidden 256, random weights, eval mode) with sliding windows, for each --slide-batch
         (0 = the whole frame at once).
  train  One training step (forward + backward of adapter and head, frozen ViT) on --crop, with
         the adapter's activation checkpointing off and on.

What is measured (Linux): peak memory = the growth of the process's peak resident set (VmHWM,
reset through /proc/self/clear_refs just before the measured call) over its resident set at that
moment; so it counts what the call adds, including allocator overhead, but not the memory already
held (the Python runtime, and for slide/train the model weights). Each child first makes the same
call once at a tiny size (a tiny checkpoint of the same format, a 64x64 input), so that code pages
of libraries loaded on first use are not counted as memory of the measured call. Resident memory counts both
anonymous memory and pages of mapped files that the process has touched; the load mode also prints
the anonymous (RssAnon) and file-backed (RssFile) growth at the end of the call. Children run
with glibc's mmap threshold fixed at 128 KiB so that freed tensors go back to the OS.

Examples:
    python dev/benchmark.py memory load --presets vitl16 vith16plus --dtypes fp32 bf16
    python dev/benchmark.py memory load --presets vitl16 --page-release on off --repeats 2
    python dev/benchmark.py memory slide --slide-batch 0 1 3 9
    python dev/benchmark.py memory train --crop 512 1024
    python dev/benchmark.py memory slide --frame 64 128 --crop 32 64 --stride 32 32 --tiny  # seconds
"""
import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from dinov3_m2f.benchmarking import MIB
from dinov3_m2f.modeling.segmentor import TINY_VIT

from . import common

# dev/benchmark.py, which starts the measured children (``memory --child MODE SPEC``).
ENTRY_POINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmark.py")

# glibc: allocations above this are mmap'ed and returned to the OS when freed (fixed, not adaptive).
_MALLOC_MMAP_THRESHOLD = str(128 * 1024)
# Cityscapes: frame, windows and overlap of configs/cityscapes/m2f_vitl16_lvd1689m_512x1024.py.
CITYSCAPES_FRAME = (1024, 2048)
CITYSCAPES_CROP = (512, 1024)
CITYSCAPES_STRIDE = (341, 683)
NUM_CLASSES = 19
# Mask2Former head width of the ViT-S measurement (original Mask2Former).
HEAD_HIDDEN = 256
# Side of the warm-up input of the slide and train children.
WARMUP_SIZE = 64
# Blocks per shard of the Hugging Face directory written by the load mode.
SHARD_BLOCKS = 8
FORMATS = ("pth", "safetensors", "hf")


# ---------------------------------------------------------------------------- measuring (child side)
def _status_kib() -> Dict[str, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0])
    return fields


def _measure(fn) -> Dict[str, float]:
    """Run ``fn``; return its peak-RSS growth, its RssAnon / RssFile growth and its time."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    before = _status_kib()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    after = _status_kib()
    return {
        "peak_mib": (after["VmHWM"] - before["VmRSS"]) / 1024,
        "anon_mib": (after["RssAnon"] - before["RssAnon"]) / 1024,
        "file_mib": (after["RssFile"] - before["RssFile"]) / 1024,
        "seconds": seconds,
        "result": result,
    }


def _weights_mib(model: torch.nn.Module) -> float:
    return sum(t.nbytes for t in model.state_dict().values()) / MIB


def _child_load(spec: Dict[str, Any]) -> Dict[str, Any]:
    if not spec["page_release"]:
        # The loader without its release of copied file pages: what that release saves.
        from dinov3_m2f.weights import dinov3

        dinov3._PageReleaser = lambda path: (lambda tensor: None)
    if spec["eager"]:
        from dinov3_m2f.modeling.dinov3 import build_dinov3
        from dinov3_m2f.weights import load_dinov3_weights

        def build(preset, weights, **overrides):
            model = build_dinov3(preset, **overrides)
            load_dinov3_weights(model, weights)
            return model
    else:
        from dinov3_m2f.weights import build_frozen_dinov3

        def build(preset, weights, **overrides):
            return build_frozen_dinov3(preset, weights=weights, dtype=spec["dtype"], **overrides)

    build(None, spec["warmup_weights"], **TINY_VIT)
    stats = _measure(lambda: build(spec["preset"], spec["weights"]))
    stats["weights_mib"] = _weights_mib(stats.pop("result"))
    return stats


def _segmentation_stack(tiny: bool, with_cp: bool):
    from dinov3_m2f.modeling.dinov3 import get_interaction_indexes
    from dinov3_m2f.modeling.segmentor import build_segmentor, build_tiny_segmentor
    from dinov3_m2f.weights import build_frozen_dinov3

    if tiny:
        vit = build_frozen_dinov3(None, init_seed=0, **TINY_VIT)
        return build_tiny_segmentor(vit, num_classes=NUM_CLASSES, with_cp=with_cp)
    vit = build_frozen_dinov3("vits16", init_seed=0)
    return build_segmentor(vit, interaction_indexes=get_interaction_indexes("vits16"),
                           head_kwargs=dict(hidden_dim=HEAD_HIDDEN, num_classes=NUM_CLASSES), with_cp=with_cp)


def _child_slide(spec: Dict[str, Any]) -> Dict[str, Any]:
    from dinov3_m2f.modeling.semantic_inference import semantic_probs, slide_inference

    adapter, head = _segmentation_stack(spec["tiny"], with_cp=False)
    adapter.eval()
    head.eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        out = head(adapter(x))
        return semantic_probs(out["pred_logits"], out["pred_masks"], output_size=tuple(x.shape[-2:]))

    frame = torch.randn(1, 3, *spec["frame"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predict(frame[:, :, :WARMUP_SIZE, :WARMUP_SIZE])

    def run() -> None:
        with torch.no_grad():
            if spec["slide_batch"] == 0:
                predict(frame)
            else:
                slide_inference(predict, frame, crop_size=tuple(spec["crop"]), stride=tuple(spec["stride"]),
                                num_classes=NUM_CLASSES, slide_batch=spec["slide_batch"])

    stats = _measure(run)
    stats.pop("result")
    stats["weights_mib"] = _weights_mib(adapter) + _weights_mib(head)
    return stats


def _child_train(spec: Dict[str, Any]) -> Dict[str, Any]:
    adapter, head = _segmentation_stack(spec["tiny"], with_cp=spec["with_cp"])
    adapter.train()
    head.train()
    images = torch.randn(spec["batch"], 3, *spec["crop"], generator=torch.Generator().manual_seed(0))

    def step(x: torch.Tensor) -> None:
        out = head(adapter(x))
        predictions = [out] + list(out["aux_outputs"])
        # Any scalar of every output will do: the benchmark is about activation memory.
        outputs = [p[name].float() for p in predictions for name in ("pred_logits", "pred_masks")]
        torch.stack([o.pow(2).mean() for o in outputs]).sum().backward()
        for param in list(adapter.parameters()) + list(head.parameters()):
            param.grad = None  # the measured step allocates its gradients, as after zero_grad(set_to_none=True)

    step(images[:, :, :WARMUP_SIZE, :WARMUP_SIZE])
    stats = _measure(lambda: step(images))
    stats.pop("result")
    stats["weights_mib"] = _weights_mib(adapter) + _weights_mib(head)
    return stats


CHILDREN = {"load": _child_load, "slide": _child_slide, "train": _child_train}


# ---------------------------------------------------------------------------- orchestrating (parent side)
def _run_child(mode: str, spec: Dict[str, Any], threads: int) -> Dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=_MALLOC_MMAP_THRESHOLD, OMP_NUM_THREADS=str(threads))
    command = [sys.executable, ENTRY_POINT, "memory", "--child", mode, json.dumps(spec)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {mode} {spec} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_checkpoints(workdir: str, label: str, preset: Optional[str], **overrides: Any) -> Dict[str, str]:
    """Random fp32 weights of a ViT as Meta .pth, Meta .safetensors and a sharded HF directory.

    Args:
        workdir: output folder; files are named after ``label`` and reused when present.
        preset, overrides: the ViT, as for ``build_dinov3``.
    """
    from safetensors.torch import save_file

    from dinov3_m2f.modeling.dinov3 import build_dinov3
    from dinov3_m2f.weights import convert_to_hf_state_dict, hf_config_from_model

    paths = {"pth": os.path.join(workdir, f"{label}.pth"),
             "safetensors": os.path.join(workdir, f"{label}.safetensors"),
             "hf": os.path.join(workdir, f"{label}_hf")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    with torch.device("meta"):
        model = build_dinov3(preset, **overrides)
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, tensor in model.state_dict().items():
        if key == "rope_embed.periods" or key.endswith("bias_mask"):
            state_dict[key] = model.initial_value(key)
        else:
            state_dict[key] = torch.empty(tensor.shape).normal_(std=0.02, generator=generator)
    torch.save(state_dict, paths["pth"])
    save_file(state_dict, paths["safetensors"])
    os.makedirs(paths["hf"], exist_ok=True)
    with open(os.path.join(paths["hf"], "config.json"), "w") as f:
        json.dump(hf_config_from_model(model), f)
    groups: List[List[str]] = [[k for k in state_dict if not k.startswith("blocks.")]]
    for first in range(0, model.n_blocks, SHARD_BLOCKS):
        prefixes = tuple(f"blocks.{i}." for i in range(first, min(first + SHARD_BLOCKS, model.n_blocks)))
        groups.append([k for k in state_dict if k.startswith(prefixes)])
    weight_map = {}
    for index, keys in enumerate(groups):
        shard = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        hf_part = convert_to_hf_state_dict({k: state_dict[k] for k in keys}, layer_prefix="model.layer.")
        save_file(hf_part, os.path.join(paths["hf"], shard))
        weight_map.update({k: shard for k in hf_part})
    with open(os.path.join(paths["hf"], "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return paths


def _implied_weights_mib(preset: str, dtype: str) -> float:
    """Size of ``preset``'s weights as build_frozen_dinov3 stores them in ``dtype`` (built on meta, no memory)."""
    from dinov3_m2f.modeling.dinov3 import build_dinov3
    from dinov3_m2f.weights import resolve_frozen_dtype

    with torch.device("meta"):
        model = build_dinov3(preset)
    target = resolve_frozen_dtype(dtype)
    sizes = (t.numel() * model.storage_dtype(k, target).itemsize for k, t in model.state_dict().items())
    return sum(sizes) / MIB


def _header(args: argparse.Namespace) -> str:
    first = common.row_start(args, torch.device("cpu"))
    return (f"{first['date']}, {first['machine']}, torch {first['torch']}, "
            f"{platform.python_implementation()} {platform.python_version()}")


def run_load(args: argparse.Namespace) -> None:
    os.makedirs(args.workdir, exist_ok=True)
    print(f"# load: {_header(args)}; {'build_dinov3 + load_dinov3_weights' if args.eager else 'build_frozen_dinov3'}")
    print("| preset | format | dtype | page release | weights MiB | peak RSS growth MiB | peak / weights "
          "| RssAnon growth MiB | RssFile growth MiB | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst: Dict[str, float] = {}
    warmup = _write_checkpoints(args.workdir, "tiny", None, **TINY_VIT)
    for preset in args.presets:
        paths = _write_checkpoints(args.workdir, preset, preset)
        for fmt in args.formats:
            for dtype in ["fp32"] if args.eager else args.dtypes:
                for _, release in itertools.product(range(args.repeats), args.page_release):  # in turn
                    spec = dict(preset=preset, weights=paths[fmt], warmup_weights=warmup[fmt], dtype=dtype,
                                eager=args.eager, page_release=release == "on")
                    stats = _run_child("load", spec, args.threads)
                    ratio = stats["peak_mib"] / stats["weights_mib"]
                    if release == "on":
                        worst[dtype] = max(worst.get(dtype, 0.0), ratio)
                    print(f"| {preset} | {fmt} | {dtype} | {release} | {stats['weights_mib']:.0f} "
                          f"| {stats['peak_mib']:.0f} | {ratio:.3f} | {stats['anon_mib']:.0f} "
                          f"| {stats['file_mib']:.0f} | {stats['seconds']:.1f} |", flush=True)
    if not args.keep:
        shutil.rmtree(args.workdir)
    for dtype, ratio in ({} if args.eager else worst).items():
        size = _implied_weights_mib(args.implied, dtype)
        print(f"implied {args.implied} {dtype}: weights {size / 1024:.2f} GiB, peak <= {ratio:.3f} x = "
              f"{ratio * size / 1024:.2f} GiB")


def run_slide(args: argparse.Namespace) -> None:
    print(f"# slide: {_header(args)}; frame {args.frame}, crop {args.crop}, stride {args.stride}, "
          f"{'tiny stack' if args.tiny else f'ViT-S/16 + adapter + Mask2Former({HEAD_HIDDEN})'}, "
          f"{args.threads} threads")
    print("| slide_batch | model weights MiB | peak RSS growth MiB | seconds |")
    print("|---|---|---|---|")
    for slide_batch in args.slide_batch:
        spec = dict(frame=args.frame, crop=args.crop, stride=args.stride, slide_batch=slide_batch, tiny=args.tiny)
        stats = _run_child("slide", spec, args.threads)
        label = "whole frame" if slide_batch == 0 else str(slide_batch)
        print(f"| {label} | {stats['weights_mib']:.0f} | {stats['peak_mib']:.0f} | {stats['seconds']:.1f} |",
              flush=True)


def run_train(args: argparse.Namespace) -> None:
    print(f"# train step: {_header(args)}; crop {args.crop}, batch {args.batch}, "
          f"{'tiny stack' if args.tiny else f'ViT-S/16 + adapter + Mask2Former({HEAD_HIDDEN})'}, fp32, "
          f"{args.threads} threads")
    print("| with_cp | model weights MiB | peak RSS growth MiB | seconds |")
    print("|---|---|---|---|")
    for with_cp in (False, True):
        spec = dict(crop=args.crop, batch=args.batch, with_cp=with_cp, tiny=args.tiny)
        stats = _run_child("train", spec, args.threads)
        print(f"| {with_cp} | {stats['weights_mib']:.0f} | {stats['peak_mib']:.0f} | {stats['seconds']:.1f} |",
              flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = common.make_parser("memory", __doc__)
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads of each measured process")
    parser.add_argument("--date", default=None, help="date in the header (default: today)")
    parser.add_argument("--machine", default=None,
                        help="machine in the header (default: from the system, with its load average)")
    modes = parser.add_subparsers(dest="mode", required=True)
    load = modes.add_parser("load", help="build + load a frozen ViT from a checkpoint")
    load.add_argument("--presets", nargs="+", default=["vitl16", "vith16plus"])
    load.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    load.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    load.add_argument("--workdir", default="/tmp/dinov3_m2f_load_memory", help="where checkpoints are written")
    load.add_argument("--keep", action="store_true", help="keep the checkpoints (reused by the next run)")
    load.add_argument("--eager", action="store_true", help="measure build_dinov3 + load_dinov3_weights (fp32)")
    load.add_argument("--implied", default="vit7b16", help="preset whose figures are extrapolated")
    load.add_argument("--page-release", nargs="+", default=["on"], choices=["on", "off"],
                      help="measure with (on) and/or without (off) the release of copied file pages")
    load.add_argument("--repeats", type=int, default=1, help="measurements of each case (in turn with --page-release)")
    for name, help_text in (("slide", "sliding-window inference of one frame"), ("train", "one training step")):
        sub = modes.add_parser(name, help=help_text)
        sub.add_argument("--crop", type=int, nargs=2, default=list(CITYSCAPES_CROP), metavar=("H", "W"))
        sub.add_argument("--tiny", action="store_true", help="tiny ViT/adapter/head (functional check)")
    slide = modes.choices["slide"]
    slide.add_argument("--frame", type=int, nargs=2, default=list(CITYSCAPES_FRAME), metavar=("H", "W"))
    slide.add_argument("--stride", type=int, nargs=2, default=list(CITYSCAPES_STRIDE), metavar=("H", "W"))
    slide.add_argument("--slide-batch", type=int, nargs="+", default=[0, 1, 3, 9],
                       help="windows per forward (0 = the whole frame in one forward)")
    modes.choices["train"].add_argument("--batch", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[2:] if argv is None else list(argv)
    if len(argv) == 3 and argv[0] == "--child":  # a measured child: print its figures as JSON
        print(json.dumps(CHILDREN[argv[1]](json.loads(argv[2]))))
        return 0
    args = parse_args(argv)
    {"load": run_load, "slide": run_slide, "train": run_train}[args.mode](args)
    return 0

"""The core model (plain PyTorch, no detectron2): frozen DINOv3 ViT + ViT-Adapter + Mask2Former
head, one training step and whole-image inference.

Random weights; the numbers are about speed and memory only. The model is built from the core
modules in the shapes of the configs (detectron2 is not needed, so this runs on bare GPU images):
  --head m2f       the original Mask2Former ADE20K head (hidden 256), as in
                   configs/ade20k/m2f_vitl16_lvd1689m_512.py and the LoveDA configs
  --head official  the official DINOv3 head shape (hidden 2048), as in
                   configs/ade20k/m2f_vit7b16_official_head_eval.py (with --backbone vit7b16)
  --tiny           the tiny model of configs/synthetic/m2f_tiny_synthetic.py (seconds on a CPU,
                   checks that everything runs)

  train ms/iter   one training step as tools/train_net.py runs it: forward of the ViT, adapter and
                  head under autocast on normalized random images, Hungarian matching and the
                  Mask2Former losses (SetCriterion with the config's weights and 12544 points, deep
                  supervision) against random label maps with a few classes per image, backward,
                  gradient clipping at 0.01 and an AdamW step (lr 1e-4, weight decay 0.05, in one
                  parameter group; the same work as the config's groups); mean of ``--iters`` steps
                  after ``--warmup`` steps
  infer images/s  whole-image inference (forward + per-class probabilities at the input size) on
                  batches of ``--infer-batch-size`` images
  peak MiB        CUDA: max allocated during the timed runs (weights included), and max reserved;
                  CPU: peak resident set growth over the timed runs

The model is built directly on the device. ``--frozen-dtype bf16`` stores the frozen ViT's weights
in bfloat16 (a 7B ViT then takes 13.4 GB instead of 27 GB).

Examples:
    python dev/benchmark.py head --head m2f               # ViT-L/16 + M2F(256), 16 x 512^2, bf16
    python dev/benchmark.py head --backbone vit7b16 --head official --frozen-dtype bf16 \\
        --skip-train --image-size 896
    python dev/benchmark.py head --tiny --device cpu
"""
import argparse
import statistics
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from dinov3_m2f.benchmarking import (
    DTYPES,
    MemoryMeter,
    autocast,
    markdown_table,
    random_label_maps,
    time_ms,
    write_records,
)
from dinov3_m2f.data.masks import IGNORE_VALUE
from dinov3_m2f.layers import MSDeformAttn
from dinov3_m2f.modeling import (
    INTERACTION_INDEXES,
    HungarianMatcher,
    SetCriterion,
    build_dinov3,
    make_weight_dict,
    official_dinov3_head_kwargs,
    prepare_targets,
    semantic_probs,
)
from dinov3_m2f.modeling.segmentor import TINY_ADAPTER, TINY_HEAD, TINY_INTERACTION_INDEXES, TINY_VIT, build_segmentor

from . import common

# --tiny: input side, batch and matching points (a functional check in seconds on a CPU).
TINY_IMAGE_SIZE = 64
TINY_BATCH = 2
TINY_POINTS = 256
# Optimizer and clipping of configs/common/optim.py and configs/common/train.py.
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.05
CLIP_MAX_NORM = 0.01
# Mask2Former semantic segmentation: hidden width of each head.
HIDDEN_DIMS = {"official": 2048, "m2f": 256}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = common.make_parser("head", __doc__)
    parser.add_argument("--backbone", default="vitl16", choices=sorted(INTERACTION_INDEXES),
                        help="DINOv3 preset (random weights)")
    parser.add_argument("--head", default="official", choices=sorted(HIDDEN_DIMS),
                        help="official DINOv3 head shape or the original Mask2Former ADE20K shape")
    parser.add_argument("--hidden-dim", type=int, default=None,
                        help="head width (default: 2048 for 'official', 256 for 'm2f')")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="training batch")
    parser.add_argument("--infer-batch-size", type=int, default=1, help="inference batch")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="autocast dtype (fp32: none)")
    parser.add_argument("--frozen-dtype", default="fp32", choices=sorted(DTYPES),
                        help="dtype the frozen ViT's weights are stored in")
    parser.add_argument("--pixel-decoder-low-precision", action="store_true",
                        help="let the pixel decoder run under autocast (the configs keep it in float32)")
    parser.add_argument("--impl", default="auto", choices=["auto", "compiled", "pytorch"],
                        help="MSDeformAttn implementation")
    parser.add_argument("--with-cp", action="store_true", help="activation checkpointing in the adapter")
    parser.add_argument("--skip-train", action="store_true", help="inference only")
    parser.add_argument("--tiny", action="store_true",
                        help=f"the tiny model, {TINY_IMAGE_SIZE}px, batch {TINY_BATCH} (functional check)")
    common.add_run_options(parser)
    args = common.parse(parser, argv, positive=["batch_size", "infer_batch_size"])
    if args.tiny:
        args.image_size, args.batch_size = TINY_IMAGE_SIZE, TINY_BATCH
    return args


def build_frozen_vit(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The frozen ViT, built on ``device`` with its weights stored in ``--frozen-dtype``.

    Stored as ``build_frozen_dinov3`` stores them (the configs' ``vit_dtype``): the weights of the
    Linear layers and the patch embedding in ``--frozen-dtype``, LayerNorm, LayerScale, tokens and
    buffers in float32. Unlike ``build_frozen_dinov3``'s random initialisation, which runs in float32
    on the CPU (28 GB of host memory for 7B), the ViT is initialised in float32 on ``device`` and then
    cast: a 7B ViT never exists on the host, but does exist once in float32 on the device.
    """
    with torch.device(device):
        vit = build_dinov3(None, **TINY_VIT) if args.tiny else build_dinov3(args.backbone)
    frozen_dtype = DTYPES[args.frozen_dtype]
    for name, param in vit.named_parameters():
        param.data = param.data.to(vit.storage_dtype(name, frozen_dtype))
    # Weights stored in a half type need autocast around the ViT even without --dtype.
    vit.autocast_dtype = None if frozen_dtype == torch.float32 else frozen_dtype
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand back the float32 copy before anything is measured
    return vit


def build_model(args: argparse.Namespace, device: torch.device) -> Tuple[nn.Module, nn.Module, SetCriterion]:
    """Adapter (around the frozen ViT), head and criterion in the shapes of the configs."""
    vit = build_frozen_vit(args, device)
    hidden_dim = args.hidden_dim or HIDDEN_DIMS[args.head]
    head_kwargs = (official_dinov3_head_kwargs(hidden_dim=hidden_dim, num_classes=args.num_classes)
                   if args.head == "official" else dict(hidden_dim=hidden_dim, num_classes=args.num_classes))
    head_kwargs["pixel_decoder_fp32"] = not args.pixel_decoder_low_precision
    point_kwargs = dict(num_points=TINY_POINTS) if args.tiny else {}  # else the configs' 12544 (the default)
    if args.tiny:  # the tiny model's sizes in the --head family's shape
        head_kwargs.update(TINY_HEAD)
        stack_kwargs = dict(interaction_indexes=TINY_INTERACTION_INDEXES, adapter_kwargs=TINY_ADAPTER)
    else:
        stack_kwargs = dict(interaction_indexes=INTERACTION_INDEXES[args.backbone])
    with torch.device(device):
        adapter, head = build_segmentor(vit, head_kwargs=head_kwargs, with_cp=args.with_cp, **stack_kwargs)
        criterion = SetCriterion(
            num_classes=args.num_classes, matcher=HungarianMatcher(**point_kwargs),
            weight_dict=make_weight_dict(num_aux_layers=head.predictor.num_layers), **point_kwargs,
        )
    for module in (adapter, head):
        for m in module.modules():
            if isinstance(m, MSDeformAttn):
                m.impl = args.impl
    return adapter, head, criterion


def benchmark_train(adapter, head, criterion, args, device) -> Dict[str, float]:
    """Mean ms per training step and the peak memory of the timed steps."""
    adapter.train()
    head.train()
    params = [p for m in (adapter, head) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    size = (args.image_size, args.image_size)
    images = torch.randn(args.batch_size, 3, *size, device=device)  # normalized images
    labels = random_label_maps(batch_size=args.batch_size, size=size, num_classes=args.num_classes,
                               generator=torch.Generator().manual_seed(0)).to(device)  # [B, H, W]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, _autocast_dtype(args)):
            outputs = head(adapter(images))
            targets = prepare_targets(labels, num_classes=args.num_classes, ignore_value=IGNORE_VALUE)
            losses = criterion(outputs, targets)
        loss = sum(value * criterion.weight_dict[name] for name, value in losses.items())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_MAX_NORM)
        optimizer.step()

    return _measure(step, args, device, images_per_call=args.batch_size)


def benchmark_inference(adapter, head, args, device) -> Dict[str, float]:
    """Images per second of whole-image inference and the peak memory of the timed batches."""
    adapter.eval()
    head.eval()
    size = (args.image_size, args.image_size)
    images = torch.randn(args.infer_batch_size, 3, *size, device=device)

    def predict() -> None:
        with torch.inference_mode(), autocast(device, _autocast_dtype(args)):
            outputs = head(adapter(images))
            semantic_probs(outputs["pred_logits"], outputs["pred_masks"], output_size=size)

    return _measure(predict, args, device, images_per_call=args.infer_batch_size)


def _autocast_dtype(args: argparse.Namespace) -> Optional[torch.dtype]:
    dtype = DTYPES[args.dtype]
    return None if dtype == torch.float32 else dtype


def _measure(fn: Callable[[], None], args, device, *, images_per_call: int) -> Dict[str, float]:
    for _ in range(args.warmup):
        fn()
    meter = MemoryMeter(device)
    meter.start()
    times = time_ms(fn, device=device, warmup=0, iters=args.iters)
    peak = meter.stop()
    ms = statistics.mean(times)
    return dict(ms_per_iter=ms, images_per_s=images_per_call * 1e3 / ms, peak_mib=peak.peak_mib,
                peak_growth_mib=peak.growth_mib, reserved_mib=peak.reserved_mib, memory_cell=peak.cell())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = common.start(args)
    adapter, head, criterion = build_model(args, device)
    n_train = sum(p.numel() for m in (adapter, head) for p in m.parameters() if p.requires_grad)
    model = "tiny" if args.tiny else f"{args.backbone} + {args.head} head"
    first = common.row_start(args, device)
    shared = dict(first, model=model, backbone="tiny" if args.tiny else args.backbone, head=args.head,
                  device=str(device), image_size=args.image_size, amp=args.dtype, frozen_dtype=args.frozen_dtype,
                  impl=args.impl, trainable_params=n_train)
    records: List[Dict] = []
    if not args.skip_train:
        result = benchmark_train(adapter, head, criterion, args, device)
        records.append(dict(shared, mode="train", batch=args.batch_size, **result))
        write_records(args.json, records)
    result = benchmark_inference(adapter, head, args, device)
    records.append(dict(shared, mode="infer", batch=args.infer_batch_size, **result))
    write_records(args.json, records)

    print(markdown_table(
        ["date", "machine", "torch", "model", "device", "mode", "image", "batch", "amp", "frozen ViT", "impl",
         "trainable params", "ms/iter", "images/s", "peak MiB"],
        ([r["date"], r["machine"], r["torch"], r["model"], r["device"], r["mode"], r["image_size"], r["batch"],
          r["amp"], r["frozen_dtype"], r["impl"], f"{r['trainable_params'] / 1e6:.1f}M", f"{r['ms_per_iter']:.1f}",
          f"{r['images_per_s']:.2f}", r["memory_cell"]] for r in records),
    ))
    return 0

# Training settings read by tools/train_net.py (see its docstring). Leaf configs copy this dict
# and override fields: `train = get_config("common/train.py").train`.
train = dict(
    output_dir="./output",
    # Trainable-only or full checkpoint to start from (or to evaluate with --eval-only). It must
    # set every trainable weight, with no unknown key and no shape difference, or training stops
    # before iteration 0 listing the keys.
    init_checkpoint="",
    # True: load only the matching weights of init_checkpoint (another num_classes, backbone and
    # adapter only, another project's head converted by tools/convert_weights.py) and log every
    # key skipped; the rest keeps its initialisation. --resume and --eval-only are always strict.
    init_partial=False,
    max_iter=160000,
    # "cuda", "cpu" or "auto" (CUDA when available).
    device="cuda",
    # Autocast; dtype "bfloat16" (no loss scaling) or "float16" (with a GradScaler).
    amp=dict(enabled=True, dtype="bfloat16"),
    # Global gradient-norm clipping over all trainable parameters (Mask2Former: full-model 0.01).
    clip_grad=dict(enabled=True, max_norm=0.01, norm_type=2.0),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    # PeriodicCheckpointer arguments.
    checkpointer=dict(period=5000, max_to_keep=3),
    # False: checkpoints hold trainable weights + optimizer/scheduler state; the frozen backbone is
    # rebuilt from model.backbone.weights. True: store the frozen backbone too.
    full_checkpoint=False,
    eval_period=5000,
    # Keep `model_best.pth` by a validation metric, checked after every evaluation; None disables.
    best_checkpoint=dict(metric="sem_seg/mIoU", mode="max"),
    # Stop after `patience` evaluations without improvement of best_checkpoint's metric
    # (e.g. dict(patience=5)); None disables. Needs best_checkpoint and eval_period > 0.
    early_stopping=None,
    # Module-name prefixes to train; everything else is frozen (e.g.
    # ["sem_seg_head.predictor.class_embed"] for a classifier-only fine-tune). None = all trainable
    # modules. Applied before the optimizer is built; frozen modules run in eval mode.
    trainable=None,
    # Module-name prefixes to freeze (e.g. ["backbone.adapter"]).
    freeze=[],
    # Micro-batches (of dataloader.train.total_batch_size images) per optimizer step; one
    # iteration = one step, so the effective batch is grad_accum_steps x total_batch_size.
    grad_accum_steps=1,
    # torch.compile of the model's backbone and head, for training and evaluation: False, True
    # (Inductor), or torch.compile arguments, e.g. dict(dynamic=True) for evaluation at changing
    # image sizes (each new size compiles again until torch makes the sizes dynamic).
    compile=False,
    log_period=20,
    seed=42,
    cudnn_benchmark=False,
    # Signals that stop training cleanly: every process finishes its iteration, a checkpoint is
    # written and the process exits with code 75 (requeue, then --resume); a second signal exits
    # at once. See docs/cluster.md.
    preemption_signals=["SIGTERM", "SIGUSR1", "SIGINT"],
)

"""A tiny frozen-ViT + adapter + Mask2Former overfits one synthetic batch (core modules only)."""
import glob
import os

import cv2
import numpy as np
import torch

from dinov3_m2f.data.synthetic import IGNORE_VALUE, SYNTHETIC_CLASSES, generate_synthetic_dataset
from dinov3_m2f.modeling import (
    DINOv3Adapter,
    HungarianMatcher,
    Mask2FormerHead,
    SetCriterion,
    build_dinov3,
    make_weight_dict,
    prepare_targets,
    semantic_probs,
)

NUM_CLASSES = len(SYNTHETIC_CLASSES)
IMAGE_SIZE = 64
BATCH = 2
EMBED_DIM = 32
DEC_LAYERS = 2
NUM_POINTS = 1024
STEPS = 250
LR = 2e-3
# ImageNet statistics on the 0..255 scale, as the LVD-1689M preset.
PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def _synthetic_batch(root: str):
    generate_synthetic_dataset(root, seed=3, num_train=BATCH, num_val=1, image_size=IMAGE_SIZE)
    images, labels = [], []
    for path in sorted(glob.glob(os.path.join(root, "train", "images", "*.png"))):
        rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(path.replace(f"{os.sep}images{os.sep}", f"{os.sep}masks{os.sep}"),
                          cv2.IMREAD_UNCHANGED)
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).float())
        labels.append(torch.from_numpy(mask.astype(np.int64)))
    images = (torch.stack(images) - PIXEL_MEAN) / PIXEL_STD  # [B, 3, H, W]
    return images, torch.stack(labels)  # [B, H, W]


def _tiny_model():
    torch.manual_seed(0)
    vit = build_dinov3(None, embed_dim=EMBED_DIM, depth=4, num_heads=2, ffn_ratio=2.0)
    adapter = DINOv3Adapter(
        vit, interaction_indexes=[0, 1, 2, 3], conv_inplane=8, deform_num_heads=2, n_points=2,
        drop_path_rate=0.0,
    )
    head = Mask2FormerHead(
        {name: (adapter.out_channels, stride) for name, stride in adapter.out_strides.items()},
        num_classes=NUM_CLASSES, hidden_dim=32, num_queries=16, nheads=2,
        enc_dim_feedforward=64, dec_dim_feedforward=64, enc_layers=1, dec_layers=DEC_LAYERS,
    )
    criterion = SetCriterion(
        num_classes=NUM_CLASSES,
        matcher=HungarianMatcher(num_points=NUM_POINTS),
        weight_dict=make_weight_dict(num_aux_layers=DEC_LAYERS),
        num_points=NUM_POINTS,
    )
    return adapter, head, criterion


def _total_loss(adapter, head, criterion, images, targets) -> torch.Tensor:
    losses = criterion(head(adapter(images)), targets)
    return sum(loss * criterion.weight_dict[name] for name, loss in losses.items())


def test_tiny_model_overfits_one_synthetic_batch(tmp_path):
    images, labels = _synthetic_batch(str(tmp_path))
    targets = prepare_targets(labels, num_classes=NUM_CLASSES, ignore_value=IGNORE_VALUE)
    adapter, head, criterion = _tiny_model()
    trainable = [p for p in [*adapter.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    adapter.train()
    head.train()

    first = None
    for _ in range(STEPS):
        loss = _total_loss(adapter, head, criterion, images, targets)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last = _total_loss(adapter, head, criterion, images, targets).item()
    assert last < first / 5, f"loss fell from {first:.3f} to {last:.3f} only"

    adapter.eval()
    head.eval()
    with torch.no_grad():
        outputs = head(adapter(images))
        probs = semantic_probs(
            outputs["pred_logits"], outputs["pred_masks"], output_size=labels.shape[-2:]
        )
    valid = labels != IGNORE_VALUE
    accuracy = (probs.argmax(dim=1) == labels)[valid].float().mean().item()
    assert accuracy >= 0.95, f"pixel accuracy {accuracy:.3f}"
    # the frozen ViT never received a gradient
    assert all(p.grad is None for p in adapter.backbone.parameters())

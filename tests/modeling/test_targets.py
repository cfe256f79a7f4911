import pytest
import torch

from dinov3_m2f.modeling.targets import prepare_targets, semseg_to_targets


def test_labels_masks_valid():
    sem_seg = torch.tensor([[0, 0, 3], [255, 3, 1], [1, 1, 255]])
    out = semseg_to_targets(sem_seg, num_classes=5)
    assert out["labels"].dtype == torch.int64
    assert out["labels"].tolist() == [0, 1, 3]
    assert out["masks"].dtype == torch.float32
    assert out["masks"].shape == (3, 3, 3)
    for k, label in enumerate(out["labels"].tolist()):
        assert torch.equal(out["masks"][k].bool(), sem_seg == label)
    assert torch.equal(out["valid"], sem_seg != 255)
    # Ignore pixels belong to no mask.
    assert out["masks"].sum(0)[~out["valid"]].abs().sum() == 0
    assert torch.equal(out["masks"].sum(0), out["valid"].float())


def test_custom_ignore_value():
    sem_seg = torch.tensor([[0, -1], [2, 2]])
    out = semseg_to_targets(sem_seg, num_classes=3, ignore_value=-1)
    assert out["labels"].tolist() == [0, 2]
    assert out["valid"].tolist() == [[True, False], [True, True]]


def test_bad_values_error_names_them():
    sem_seg = torch.tensor([[0, 7], [9, 255]])
    with pytest.raises(ValueError, match=r"\[7, 9\]"):
        semseg_to_targets(sem_seg, num_classes=5)
    with pytest.raises(ValueError, match=r"\[-2\]"):
        semseg_to_targets(torch.tensor([[0, -2]]), num_classes=5)


def test_bad_inputs():
    with pytest.raises(TypeError):
        semseg_to_targets(torch.zeros(2, 2), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        semseg_to_targets(torch.zeros(1, 2, 2, dtype=torch.long), num_classes=3)
    with pytest.raises(ValueError, match="ignore_value"):
        semseg_to_targets(torch.zeros(2, 2, dtype=torch.long), num_classes=3, ignore_value=1)


def test_all_ignore():
    out = semseg_to_targets(torch.full((4, 6), 255, dtype=torch.uint8), num_classes=3)
    assert out["labels"].shape == (0,)
    assert out["masks"].shape == (0, 4, 6)
    assert not out["valid"].any()


def test_prepare_targets_batched_and_padded():
    batch = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [255, 2]]])
    targets = prepare_targets(batch, num_classes=3)
    assert [t["labels"].tolist() for t in targets] == [[0, 1], [2]]
    # a label map padded with the ignore value (as the meta-architecture pads a batch)
    padded = torch.nn.functional.pad(torch.tensor([[0, 1]]), (0, 1, 0, 1), value=255)
    targets = prepare_targets([padded, batch[0]], num_classes=3)
    assert targets[0]["valid"].tolist() == [[True, True, False], [False, False, False]]
    assert targets[0]["masks"].shape == (2, 2, 3)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        prepare_targets(batch[0], num_classes=3)

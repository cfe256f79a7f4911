"""ClassMerge: merged semantic scores equal the sums of the old ones; validation; mapping-file loader."""
import json

import pytest
import torch
import torch.nn.functional as F
from test_official_parity import FIXTURE, _build

from dinov3_m2f.modeling.class_merge import ClassMerge, load_class_merge
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead
from dinov3_m2f.weights.official_head import convert_official_segmentor_state_dict, load_converted_state_dict

# Fixture head: 7 classes. Class 4 is in no group, so its mass goes to no-object.
GROUPS = [[0, 3], [1], [6, 2, 5]]
TOL_EXACT = 1e-5


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def _scores_f64(outputs, size):
    """semantic_probs (softmax x sigmoid(upsampled mask), summed over queries) in float64."""
    masks = F.interpolate(outputs["pred_masks"].double(), size=size, mode="bilinear", align_corners=False)
    probs = outputs["pred_logits"].double().softmax(-1)[..., :-1]  # [B, Q, C]
    return torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())


def test_merged_semantic_scores_are_sums_of_old_scores_on_official_fixture(fixture):
    adapter, head = _build(fixture["config"])
    load_converted_state_dict(convert_official_segmentor_state_dict(fixture["state_dict"]), adapter=adapter, head=head)
    adapter.eval()
    head.eval()
    with torch.no_grad():
        features = adapter(fixture["image"])
        old = head(features)
        head.class_merge = ClassMerge(groups=GROUPS, num_old_classes=head.num_classes)
        new = head(features)
    size = tuple(fixture["image"].shape[-2:])
    # float64 scores, so that the comparison measures the merge and not float32 summation order
    # (the scores reach ~25; float32 rounding alone differs by ~2e-5)
    old_probs = _scores_f64(old, size)  # [1, 7, H, W]
    new_probs = _scores_f64(new, size)  # [1, 3, H, W]
    expected = torch.stack([old_probs[:, g].sum(1) for g in GROUPS], dim=1)
    assert new_probs.shape == expected.shape
    assert (new_probs - expected).abs().max().item() <= TOL_EXACT
    # the unmerged class really carried mass, so dropping it is observable
    assert old_probs[:, 4].max().item() > 0.01
    # every auxiliary output is merged too, and the masks are untouched
    assert len(new["aux_outputs"]) == len(old["aux_outputs"])
    for new_aux, old_aux in zip(new["aux_outputs"], old["aux_outputs"]):
        assert new_aux["pred_logits"].shape[-1] == len(GROUPS) + 1
        old_p = old_aux["pred_logits"].softmax(-1)
        assert torch.allclose(new_aux["pred_logits"].softmax(-1)[..., 0], old_p[..., [0, 3]].sum(-1), atol=TOL_EXACT)
        assert torch.equal(new_aux["pred_masks"], old_aux["pred_masks"])
    assert torch.equal(new["pred_masks"], old["pred_masks"])


def test_softmax_equals_group_sums_and_stays_finite_for_extreme_logits():
    merge = ClassMerge(groups=[[2], [0, 1]], num_old_classes=4)
    logits = torch.tensor([[300.0, -300.0, 0.0, 5.0, 1.0], [-1e4, -1e4, 1e4, 0.0, 0.0]], dtype=torch.float64)
    out = merge(logits)
    assert torch.isfinite(out).all()
    p_old, p_new = logits.softmax(-1), out.softmax(-1)
    assert torch.allclose(p_new[:, 0], p_old[:, 2])
    assert torch.allclose(p_new[:, 1], p_old[:, 0] + p_old[:, 1])
    assert torch.allclose(p_new[:, 2], p_old[:, 3] + p_old[:, 4])  # unmerged class 3 + no-object
    # gradients flow to every old logit of a group
    logits32 = torch.randn(2, 3, 5, requires_grad=True)
    merge(logits32)[..., 1].sum().backward()
    assert (logits32.grad[..., :2] != 0).all() and (logits32.grad[..., 2:] == 0).all()


def test_buffer_in_state_dict_and_mismatch_is_refused():
    merge = ClassMerge(groups=[[1], [0, 2]], num_old_classes=3)
    assert merge.old_to_new.tolist() == [1, 0, 1, 2]
    assert merge.groups == [[1], [0, 2]]
    state = merge.state_dict()
    assert list(state) == ["old_to_new"]
    ClassMerge(groups=[[1], [0, 2]], num_old_classes=3).load_state_dict(state, strict=True)
    other = ClassMerge(groups=[[1], [0]], num_old_classes=3)
    with pytest.raises(RuntimeError, match="class merge"):
        other.load_state_dict(state)


def _tiny_head(**kwargs):
    return Mask2FormerHead(
        {"res2": (32, 4), "res3": (32, 8), "res4": (32, 16), "res5": (32, 32)},
        hidden_dim=32, num_queries=3, nheads=2, enc_dim_feedforward=16, dec_dim_feedforward=16,
        enc_layers=1, dec_layers=2, **kwargs,
    )


def test_head_without_merge_keeps_keys_and_with_merge_reports_new_classes():
    plain = _tiny_head(num_classes=5)
    assert plain.num_classes == 5
    assert not any("class_merge" in k for k in plain.state_dict())
    merged = _tiny_head(num_classes=5, class_merge=ClassMerge(groups=[[0, 1], [4]], num_old_classes=5))
    assert merged.num_classes == 2
    assert set(merged.state_dict()) - set(plain.state_dict()) == {"class_merge.old_to_new"}
    with pytest.raises(ValueError, match="num_classes=4"):
        _tiny_head(num_classes=4, class_merge=ClassMerge(groups=[[0]], num_old_classes=5))


@pytest.mark.parametrize(
    "groups, num_old, error, match",
    [
        ([[0, 1], [2, 1]], 3, ValueError, r"old class 1 in groups\[1\] is also in groups\[0\]"),
        ([[0, 0]], 3, ValueError, "old class 0 .* twice"),
        ([[0], []], 3, ValueError, r"groups\[1\] must be a non-empty"),
        ([[0, 3]], 3, ValueError, "old class 3, outside 0..2"),
        ([[-1]], 3, ValueError, "outside"),
        ([], 3, ValueError, "non-empty"),
        ([[0.5]], 3, TypeError, "integers"),
        ([[0]], 0, ValueError, "num_old_classes"),
    ],
)
def test_invalid_groups(groups, num_old, error, match):
    with pytest.raises(error, match=match):
        ClassMerge(groups=groups, num_old_classes=num_old)


def test_wrong_logit_width_is_refused():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        ClassMerge(groups=[[0]], num_old_classes=3)(torch.zeros(2, 5))


def _write(tmp_path, content) -> str:
    path = tmp_path / "merge.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_load_class_merge(tmp_path):
    path = _write(tmp_path, {"classes": [{"name": "building", "merge": [1, 2]}, {"name": "road", "merge": [0]}]})
    merge = load_class_merge(path, num_old_classes=4)
    assert merge.class_names == ["building", "road"]
    assert merge.old_to_new.tolist() == [1, 0, 0, 2, 2]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "invalid JSON"),
        ({"groups": []}, '"classes"'),
        ({"classes": [{"name": "a"}]}, r"classes\[0\]"),
        ({"classes": [{"name": "a", "merge": 3}]}, "merge a list"),
        ({"classes": [{"name": "a", "merge": [0]}, {"name": "a", "merge": [1]}]}, "duplicate class names"),
        ({"classes": [{"name": "a", "merge": [0, 1]}, {"name": "b", "merge": [1]}]}, "old class 1"),
        ({"classes": [{"name": "a", "merge": [9]}]}, "outside"),
    ],
)
def test_load_class_merge_errors_name_the_file(tmp_path, content, match):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=match) as info:
        load_class_merge(path, num_old_classes=4)
    assert path in str(info.value)


def test_load_class_merge_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_class_merge(str(tmp_path / "missing.json"), num_old_classes=4)

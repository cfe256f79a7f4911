"""tools/convert_weights.py on the official fixture: head-only and full checkpoints, class merge, errors,
and evaluation of a converted checkpoint through the Detectron2 model."""
import json
from pathlib import Path

import pytest
import torch
from helpers import load_tool
from test_official_parity import FIXTURE, _build

from dinov3_m2f.modeling.class_merge import load_class_merge
from dinov3_m2f.modeling.mask2former_head import Mask2FormerHead, official_dinov3_head_kwargs
from dinov3_m2f.weights.official_head import BACKBONE_PREFIX, convert_official_segmentor_state_dict

TOL_SCORES = 1e-3  # tests/fixtures/README.md's tolerance for semantic_probs

tool = load_tool("convert_weights")


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def _save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def _convert(tmp_path, source, *extra_args) -> dict:
    out = tmp_path / "converted.pth"
    assert tool.main([str(source), str(out), *extra_args]) == 0
    return torch.load(out, weights_only=True)


def _section(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_head_only_checkpoint(fixture, tmp_path, capsys):
    source = _save(fixture["head_state_dict"], tmp_path / "m2f_head.pth")
    converted = _convert(tmp_path, source)
    assert converted["checkpoint_kind"] == "trainable"
    state = converted["model"]
    assert len(state) == len(fixture["head_state_dict"])
    assert all(k.startswith((tool.D2_ADAPTER_PREFIX, tool.D2_HEAD_PREFIX)) for k in state)
    assert not any(k.startswith(tool.D2_VIT_PREFIX) for k in state)

    adapter, head = _build(fixture["config"])
    head.load_state_dict(_section(state, tool.D2_HEAD_PREFIX), strict=True)
    result = adapter.load_state_dict(_section(state, tool.D2_ADAPTER_PREFIX), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("backbone.") for k in result.missing_keys)
    printed = capsys.readouterr().out
    assert "model.num_classes = 7" in printed
    assert "model.sem_seg_head.hidden_dim = 64" in printed
    assert "model.sem_seg_head.input_shape.channels = 128" in printed


def test_full_checkpoint_wrapped_with_backbone(fixture, tmp_path):
    source = _save({"state_dict": fixture["state_dict"]}, tmp_path / "segmentor.pth")
    converted = _convert(tmp_path, source, "--include-backbone")
    assert converted["checkpoint_kind"] == "full"
    state = converted["model"]
    assert len(state) == len(fixture["state_dict"])
    adapter, head = _build(fixture["config"])
    adapter.load_state_dict(_section(state, tool.D2_ADAPTER_PREFIX), strict=True)
    head.load_state_dict(_section(state, tool.D2_HEAD_PREFIX), strict=True)
    vit_key = "cls_token"
    assert torch.equal(adapter.backbone.state_dict()[vit_key], fixture["state_dict"][BACKBONE_PREFIX + vit_key])


def test_full_checkpoint_without_backbone_flag_drops_the_vit(fixture, tmp_path):
    source = _save({"model": fixture["state_dict"]}, tmp_path / "segmentor.pth")
    state = _convert(tmp_path, source)["model"]
    assert len(state) == len(fixture["head_state_dict"])
    assert not any(k.startswith(tool.D2_VIT_PREFIX) for k in state)


def test_class_merge_is_stored_and_loads_into_a_merged_head(fixture, tmp_path, capsys):
    mapping = tmp_path / "merge.json"
    mapping.write_text(json.dumps({"classes": [{"name": "a", "merge": [0, 3]}, {"name": "b", "merge": [1, 2]}]}))
    source = _save(fixture["head_state_dict"], tmp_path / "m2f_head.pth")
    state = _convert(tmp_path, source, "--class-merge", str(mapping))["model"]
    assert state[tool.D2_CLASS_MERGE_KEY].tolist() == [0, 1, 1, 0, 2, 2, 2, 2]
    config = fixture["config"]
    head = Mask2FormerHead(
        {name: (128, stride) for name, stride in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32))},
        class_merge=load_class_merge(str(mapping), num_old_classes=7),
        **official_dinov3_head_kwargs(hidden_dim=config["head"]["hidden_dim"], num_classes=7),
    )
    head.load_state_dict(_section(state, tool.D2_HEAD_PREFIX), strict=True)
    printed = capsys.readouterr().out
    assert "model.num_classes = 2" in printed
    assert "model.sem_seg_head.num_classes = 7" in printed
    assert "model.sem_seg_head.class_merge = L(load_class_merge)" in printed


def test_errors_name_the_file(fixture, tmp_path):
    unknown = _save({"encoder.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth is not an official DINOv3"):
        tool.main([unknown, str(tmp_path / "out.pth")])
    not_dict = _save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth holds a list"):
        tool.main([not_dict, str(tmp_path / "out.pth")])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read checkpoint .*garbage.pth"):
        tool.main([str(garbage), str(tmp_path / "out.pth")])
    head_only = _save(fixture["head_state_dict"], tmp_path / "m2f_head.pth")
    with pytest.raises(ValueError, match="m2f_head.pth is a head-only checkpoint"):
        tool.main([head_only, str(tmp_path / "out.pth"), "--include-backbone"])
    ours = _convert(tmp_path, head_only)
    already = _save(ours, tmp_path / "ours.pth")
    with pytest.raises(ValueError, match="already has this project's key names"):
        tool.main([already, str(tmp_path / "out2.pth")])
    with pytest.raises(FileExistsError, match="--overwrite"):
        tool.main([head_only, str(tmp_path / "converted.pth")])
    assert tool.main([head_only, str(tmp_path / "converted.pth"), "--overwrite"]) == 0
    assert not list(tmp_path.glob(".tmp_*"))


def test_the_whole_head_is_checked_before_config_advice(fixture, tmp_path, capsys):
    head = dict(fixture["head_state_dict"])
    query_feat = "segmentation_model.1.predictor.query_feat.weight"
    class_embed = "segmentation_model.1.predictor.class_embed.weight"
    missing = {k: v for k, v in head.items() if k != class_embed}
    with pytest.raises(ValueError, match=r"missing\.pth: the head lacks \['predictor.class_embed.weight'\]"):
        tool.main([_save(missing, tmp_path / "missing.pth"), str(tmp_path / "out.pth")])
    odd = dict(head, **{query_feat: torch.zeros(5, 7)})
    with pytest.raises(ValueError, match=r"odd\.pth: .*disagree.*hidden_dim 64.*1 wrong shape: "
                                         r"\['predictor.query_feat.weight \(5, 7\) \(expected \(100, 64\)\)'\]"):
        tool.main([_save(odd, tmp_path / "odd.pth"), str(tmp_path / "out.pth")])
    no_level_embed = {k: v for k, v in head.items() if not k.endswith("0.level_embed")}
    with pytest.raises(ValueError, match="lvl.pth: the adapter has no"):
        tool.main([_save(no_level_embed, tmp_path / "lvl.pth"), str(tmp_path / "out.pth")])
    del head[query_feat]  # a missing tensor the sizes are not read from
    with pytest.raises(ValueError, match=r"nofeat\.pth: .*1 missing: \['predictor.query_feat.weight'\]"):
        tool.main([_save(head, tmp_path / "nofeat.pth"), str(tmp_path / "out.pth")])
    assert "hidden_dim" not in capsys.readouterr().out and not (tmp_path / "out.pth").exists()


def test_converted_head_evaluates_in_the_d2_model(fixture, tmp_path):
    """Trainable-only converted checkpoint + ViT weights -> DINOv3Mask2Former inference == official scores."""
    pytest.importorskip("detectron2")
    from dinov3_m2f.d2 import D2DINOv3Backbone, DINOv3Mask2Former, dinov3_pyramid_shape
    from dinov3_m2f.d2.checkpoint import TrainableCheckpointer
    from dinov3_m2f.modeling.criterion import SetCriterion, make_weight_dict
    from dinov3_m2f.modeling.dinov3 import kwargs_from_official_config
    from dinov3_m2f.modeling.matcher import HungarianMatcher

    config = fixture["config"]
    # the official adapter's pretrain_size and init_values (0.0: no injector) have no counterpart here
    adapter_kwargs = {k: v for k, v in config["adapter"].items()
                      if k not in ("pretrain_size", "init_values", "interaction_indexes")}
    vit_kwargs = kwargs_from_official_config(config["backbone"])
    backbone = D2DINOv3Backbone(
        preset=None, vit_kwargs=vit_kwargs, interaction_indexes=config["adapter"]["interaction_indexes"],
        init_seed=0, norm="BN", adapter_kwargs=adapter_kwargs,
    )
    num_classes = config["head"]["num_classes"]
    head_kwargs = official_dinov3_head_kwargs(hidden_dim=config["head"]["hidden_dim"], num_classes=num_classes)
    head = Mask2FormerHead(dinov3_pyramid_shape(channels=backbone.adapter.out_channels), **head_kwargs)
    criterion = SetCriterion(
        num_classes=num_classes, matcher=HungarianMatcher(),
        weight_dict=make_weight_dict(num_aux_layers=head_kwargs["dec_layers"]),
    )
    model = DINOv3Mask2Former(backbone=backbone, sem_seg_head=head, criterion=criterion, num_classes=num_classes)
    model.eval()
    # the ViT comes from its own weights (model.backbone.weights in a config)
    vit_state = convert_official_segmentor_state_dict(fixture["state_dict"])["backbone"]
    model.backbone.vit.load_state_dict(vit_state, strict=True)
    source = _save(fixture["head_state_dict"], tmp_path / "m2f_head.pth")
    out = tmp_path / "converted.pth"
    assert tool.main([source, str(out)]) == 0
    TrainableCheckpointer(model, strict=True).load(str(out))

    image = fixture["image"][0]  # [3, H, W], normalized; the model normalizes 0..255 pixels itself
    pixels = image * model.pixel_std + model.pixel_mean
    with torch.no_grad():
        scores = model([{"image": pixels}])[0]["sem_seg"]  # [C, H, W]
    assert (scores - fixture["semantic_probs"][0]).abs().max().item() <= TOL_SCORES

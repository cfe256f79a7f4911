"""D2DINOv3Backbone: detectron2 Backbone contract, frozen ViT, seeded init, norm choice."""
import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.layers import NaiveSyncBatchNorm, ShapeSpec  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402

from dinov3_m2f.d2.backbone import D2DINOv3Backbone, dinov3_pyramid_shape  # noqa: E402

EMBED_DIM = 32
TINY_VIT = dict(embed_dim=EMBED_DIM, depth=4, num_heads=2, patch_size=16)


def _tiny_backbone(**kwargs) -> D2DINOv3Backbone:
    args = dict(
        preset=None,
        vit_kwargs=TINY_VIT,
        interaction_indexes=[0, 1, 2, 3],
        init_seed=0,
        adapter_kwargs=dict(conv_inplane=8, deform_num_heads=2, n_points=2, drop_path_rate=0.0),
    )
    args.update(kwargs)
    return D2DINOv3Backbone(**args)


def test_output_shape():
    backbone = _tiny_backbone()
    expected = {
        "res2": ShapeSpec(channels=EMBED_DIM, stride=4),
        "res3": ShapeSpec(channels=EMBED_DIM, stride=8),
        "res4": ShapeSpec(channels=EMBED_DIM, stride=16),
        "res5": ShapeSpec(channels=EMBED_DIM, stride=32),
    }
    assert backbone.output_shape() == expected
    assert dinov3_pyramid_shape(channels=EMBED_DIM) == expected
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"size_divisibility": 32, "square_size": 0}


def test_forward_shapes_after_detectron2_padding():
    backbone = _tiny_backbone().eval()
    images = ImageList.from_tensors(
        [torch.randn(3, 70, 50), torch.randn(3, 40, 90)],
        backbone.size_divisibility,
        padding_constraints=backbone.padding_constraints,
    )
    assert tuple(images.tensor.shape[-2:]) == (96, 96)
    with torch.no_grad():
        features = backbone(images.tensor)
    for name, spec in backbone.output_shape().items():
        assert features[name].shape == (2, spec.channels, 96 // spec.stride, 96 // spec.stride)


def test_vit_frozen_and_stays_in_eval_mode():
    backbone = _tiny_backbone()
    backbone.train()
    assert not backbone.vit.training
    assert backbone.adapter.training
    assert not any(p.requires_grad for p in backbone.vit.parameters())
    assert all(p.requires_grad for p in backbone.adapter.spm.parameters())


def test_init_seed_reproduces_random_vit():
    first, second = _tiny_backbone(init_seed=3), _tiny_backbone(init_seed=3)
    other = _tiny_backbone(init_seed=4)
    w1 = first.vit.patch_embed.proj.weight
    assert torch.equal(w1, second.vit.patch_embed.proj.weight)
    assert not torch.equal(w1, other.vit.patch_embed.proj.weight)


def test_weights_file_is_loaded(tmp_path):
    source = _tiny_backbone(init_seed=5)
    path = tmp_path / "vit.pth"
    torch.save(source.vit.state_dict(), path)
    loaded = _tiny_backbone(init_seed=None, weights=str(path))
    assert torch.equal(loaded.vit.blocks[1].mlp.fc1.weight, source.vit.blocks[1].mlp.fc1.weight)


def test_norm_choice():
    assert isinstance(_tiny_backbone(norm="auto").adapter.norm1, torch.nn.BatchNorm2d)
    naive = _tiny_backbone(norm="naiveSyncBN").adapter
    assert isinstance(naive.norm1, NaiveSyncBatchNorm)
    assert isinstance(naive.spm.stem[1], NaiveSyncBatchNorm)


def test_missing_interaction_indexes_for_custom_vit():
    with pytest.raises(ValueError, match="interaction_indexes"):
        _tiny_backbone(interaction_indexes=None)

"""Dataset registration (ours on tiny fake directory trees, colours added to detectron2's) and the\ndata configs."""
import os

import cv2
import numpy as np
import pytest
from helpers import REPO

pytest.importorskip("detectron2")

import detectron2.data.transforms as T  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from dinov3_m2f.d2 import datasets as ds  # noqa: E402
from dinov3_m2f.data.loveda import LOVEDA_CLASSES, LOVEDA_LABEL_MAP  # noqa: E402
from dinov3_m2f.d2.evaluation import SemSegGroundTruthLoader  # noqa: E402

CONFIG_DIR = os.path.join(REPO, "configs", "common", "data")


def _write_image(path, h=8, w=10):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 100, np.uint8))


def _write_mask(path, values=(0, 1), h=8, w=10):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mask = np.resize(np.array(values, np.uint8), (h, w))
    assert cv2.imwrite(str(path), mask)


def _make_loveda(root):
    for split in ("Train", "Val", "Test"):
        for domain, stem in (("Urban", "10"), ("Rural", "20")):
            _write_image(os.path.join(root, split, domain, "images_png", f"{stem}.png"))
            if split != "Test":
                _write_mask(os.path.join(root, split, domain, "masks_png", f"{stem}.png"), (0, 1, 7))


def test_loveda(tmp_path, registered_under):
    root = str(tmp_path / "LoveDA")
    _make_loveda(root)
    registered_under(ds.register_all_loveda, "loveda_sem_seg", ("train", "val", "test"), tmp_path)
    train = DatasetCatalog.get("loveda_sem_seg_train")
    assert [os.path.relpath(d["file_name"], root) for d in train] == [
        "Train/Urban/images_png/10.png", "Train/Rural/images_png/20.png"]
    assert all(d["sem_seg_file_name"].endswith(d["file_name"][-6:]) and "masks_png" in d["sem_seg_file_name"]
               for d in train)
    test = DatasetCatalog.get("loveda_sem_seg_test")
    assert len(test) == 2 and all("sem_seg_file_name" not in d for d in test)
    meta = MetadataCatalog.get("loveda_sem_seg_val")
    assert meta.stuff_classes == list(LOVEDA_CLASSES) and len(meta.stuff_colors) == 7
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert meta.image_root == meta.sem_seg_root == os.path.join(root, "Val")
    assert meta.label_map == {0: 255, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}
    # the evaluator's ground-truth reader applies the shift
    val = DatasetCatalog.get("loveda_sem_seg_val")
    gt = SemSegGroundTruthLoader("loveda_sem_seg_val")(val[0]["sem_seg_file_name"])
    assert set(np.unique(gt).tolist()) == {255, 0, 6}


def test_detectron2_builtin_registrations_get_colors():
    # detectron2 registers these names itself; importing our datasets module adds the colours
    for name in ("ade20k_sem_seg_train", "ade20k_sem_seg_val"):
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_colors) == len(meta.stuff_classes) == 150
    city = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    assert len(city.stuff_colors) == len(city.stuff_classes) == 19
    assert city.stuff_colors[0] == (128, 64, 128) and city.stuff_classes[0] == "road"
    assert city.stuff_colors[18] == (119, 11, 32) and city.stuff_classes[18] == "bicycle"


def test_folder_dataset(tmp_path, catalog):
    _write_image(str(tmp_path / "images" / "a.jpg"))
    _write_image(str(tmp_path / "images" / "b.png"))
    _write_mask(str(tmp_path / "masks" / "a.png"))
    _write_mask(str(tmp_path / "masks" / "b.png"))
    kwargs = dict(image_dir=str(tmp_path / "images"), mask_dir=str(tmp_path / "masks"),
                  class_names=["bg", "roof"])
    assert ds.register_folder_dataset("t_folder", **kwargs) == "t_folder"
    assert ds.register_folder_dataset("t_folder", **kwargs) == "t_folder"  # idempotent
    dicts = DatasetCatalog.get("t_folder")
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["a.jpg", "b.png"]
    assert [os.path.basename(d["sem_seg_file_name"]) for d in dicts] == ["a.png", "b.png"]
    meta = MetadataCatalog.get("t_folder")
    assert meta.stuff_classes == ["bg", "roof"] and len(meta.stuff_colors) == 2
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    with pytest.raises(ValueError, match="already registered"):
        ds.register_folder_dataset("t_folder", **{**kwargs, "mask_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="ignore_value"):
        ds.register_folder_dataset("t_folder2", **{**kwargs, "ignore_value": 1})
    with pytest.raises(ValueError, match="colors"):
        ds.register_folder_dataset("t_folder3", **{**kwargs, "colors": [(0, 0, 0)]})


def test_a_dataset_is_listed_once_per_process(tmp_path, catalog, caplog):
    # an evaluation asks for its dataset three times (test loader, SemSegEvaluator, its
    # ground-truth reader): the files are listed, and "Loaded N images" logged, once
    _write_image(str(tmp_path / "images" / "a.png"))
    _write_mask(str(tmp_path / "masks" / "a.png"))
    ds.register_folder_dataset("t_once", image_dir=str(tmp_path / "images"),
                               mask_dir=str(tmp_path / "masks"), class_names=["bg", "roof"])
    with caplog.at_level("INFO", logger="dinov3_m2f"):
        first = DatasetCatalog.get("t_once")
        first[0]["file_name"] = "changed by a caller"
        _write_image(str(tmp_path / "images" / "b.png"))  # not seen: listed already
        again = DatasetCatalog.get("t_once")
        SemSegGroundTruthLoader("t_once")
    assert [os.path.basename(d["file_name"]) for d in again] == ["a.png"]
    assert sum("Loaded 1 images" in r.getMessage() for r in caplog.records) == 1
    # detectron2's own registrations too
    assert isinstance(DatasetCatalog["ade20k_sem_seg_val"], ds.ListedOnce)
    assert isinstance(DatasetCatalog["cityscapes_fine_sem_seg_train"], ds.ListedOnce)


def test_folder_errors_name_paths(tmp_path, catalog):
    # registration is cheap: nothing is read until the dicts are loaded
    ds.register_folder_dataset("t_missing", image_dir=str(tmp_path / "nope"),
                               mask_dir=str(tmp_path / "m"), class_names=["a", "b"])
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}.*expected layout"):
        DatasetCatalog.get("t_missing")

    (tmp_path / "empty").mkdir()
    ds.register_folder_dataset("t_empty", image_dir=str(tmp_path / "empty"),
                               mask_dir=str(tmp_path / "m"), class_names=["a", "b"])
    with pytest.raises(FileNotFoundError, match=f"no images.*{tmp_path / 'empty'}"):
        DatasetCatalog.get("t_empty")

    _write_image(str(tmp_path / "img" / "x.png"))
    _write_image(str(tmp_path / "img" / "y.png"))
    _write_mask(str(tmp_path / "msk" / "x.png"))
    ds.register_folder_dataset("t_nomask", image_dir=str(tmp_path / "img"),
                               mask_dir=str(tmp_path / "msk"), class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"1 images have no mask.*y\.png"):
        DatasetCatalog.get("t_nomask")


def test_synthetic_registration_is_lazy(tmp_path, registered_under):
    registered_under(ds.register_all_synthetic, "synthetic_sem_seg", ("train", "val"), tmp_path)
    assert not os.listdir(tmp_path)  # nothing generated yet
    val = DatasetCatalog.get("synthetic_sem_seg_val")
    assert len(val) > 0 and val[0]["file_name"].startswith(str(tmp_path / "dinov3_m2f_synthetic"))
    assert MetadataCatalog.get("synthetic_sem_seg_train").stuff_classes == [
        "background", "building", "road", "water", "barren", "forest", "agriculture"]


def test_folder_config_registers_from_config(tmp_path, catalog):
    for split in ("train", "val"):
        _write_image(str(tmp_path / split / "images" / "a.png"))
        _write_mask(str(tmp_path / split / "masks" / "a.png"), (0, 2))
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "folder.py"))
    cfg = LazyConfig.apply_overrides(cfg, [
        f"dataloader.train.dataset.names.image_dir={tmp_path}/train/images",
        f"dataloader.train.dataset.names.mask_dir={tmp_path}/train/masks",
        "dataloader.train.dataset.names.class_names=[bg,a,b]",
        "dataloader.train.dataset.names.name=t_cfg_train",
        "dataloader.train.mapper.num_classes=3",
        f"dataloader.test.dataset.names.image_dir={tmp_path}/val/images",
        f"dataloader.test.dataset.names.mask_dir={tmp_path}/val/masks",
        "dataloader.test.dataset.names.name=t_cfg_val",
    ])
    evaluator = instantiate(cfg.dataloader.evaluator)  # registers the val folder on its own
    assert evaluator._class_names == ["bg", "a", "b"]
    assert MetadataCatalog.get("t_cfg_val").stuff_classes == ["bg", "a", "b"]
    dicts = instantiate(cfg.dataloader.train.dataset)
    assert len(dicts) == 1 and "t_cfg_train" in DatasetCatalog.list()
    mapper = instantiate(cfg.dataloader.train.mapper)
    assert mapper.num_classes == 3 and mapper.ignore_label == 255


def test_loveda_config_evaluator_reads_shifted_gt(tmp_path, registered_under):
    _make_loveda(str(tmp_path / "LoveDA"))
    registered_under(ds.register_all_loveda, "loveda_sem_seg", ("train", "val", "test"), tmp_path)
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "loveda.py"))
    evaluator = instantiate(cfg.dataloader.evaluator)
    gt_files = sorted(evaluator.input_file_to_gt_file.values())
    assert len(gt_files) == 2
    assert set(np.unique(evaluator.sem_seg_loading_fn(gt_files[0], dtype=int)).tolist()) == {255, 0, 6}
    mapper = instantiate(cfg.dataloader.train.mapper)
    assert mapper.label_map == LOVEDA_LABEL_MAP and mapper.num_classes == 7


@pytest.mark.parametrize("name,num_classes,crop", [
    ("synthetic", 7, 128), ("loveda", 7, 512), ("ade20k", 150, 512), ("cityscapes", 19, (512, 1024)),
    ("folder", 2, 512),
])
def test_configs_build_mappers(name, num_classes, crop):
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, f"{name}.py"))
    assert set(cfg.dataloader.keys()) == {"train", "test", "evaluator"}
    train = instantiate(cfg.dataloader.train.mapper)
    test = instantiate(cfg.dataloader.test.mapper)
    assert train.is_train and not test.is_train
    assert train.num_classes == num_classes
    crops = [a.crop_aug.crop_size for a in train.augmentations.augs
             if isinstance(a, T.RandomCrop_CategoryAreaConstraint)]
    assert [tuple(c) for c in crops] == [crop if isinstance(crop, tuple) else (crop, crop)]
    assert cfg.dataloader.evaluator.dataset_name == cfg.dataloader.test.dataset.names

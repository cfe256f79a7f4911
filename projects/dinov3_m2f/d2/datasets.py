"""Dataset registration in detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

Like ``detectron2.data.datasets.builtin``, importing this module registers our standard names
under ``$DETECTRON2_DATASETS`` (default ``datasets``); files are read when the dicts are loaded:

``synthetic_sem_seg_{train,val}`` (generated on the first load) and
``loveda_sem_seg_{train,val,test}`` (masks used as shipped: metadata ``label_map`` turns 0 =
no-data into 255 and 1..7 into 0..6). detectron2 registers ``ade20k_sem_seg_*`` and
``cityscapes_fine_sem_seg_*`` itself; this module adds the ``stuff_colors`` they lack. Every
registration here lists its files once per process (:class:`ListedOnce`).
:func:`register_folder_dataset` registers a user's folders of images and masks.
"""
import functools
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, CITYSCAPES_CATEGORIES

from dinov3_m2f.data.files import datasets_root, load_split_dicts
from dinov3_m2f.data.loveda import LOVEDA_CLASSES, LOVEDA_COLORS, LOVEDA_DOMAINS, LOVEDA_LABEL_MAP
from dinov3_m2f.data.masks import IGNORE_VALUE
from dinov3_m2f.data.synthetic import (
    CACHE_DIR_NAME,
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    ensure_synthetic_dataset,
)
from dinov3_m2f.data.visualize import class_colors

logger = logging.getLogger(__name__)

__all__ = [
    "ListedOnce",
    "adjust_builtin_registrations",
    "register_all_loveda",
    "register_all_synthetic",
    "register_folder_dataset",
]


class ListedOnce:
    """A ``DatasetCatalog`` loader that lists the files once per process and then returns copies
    of that list: every evaluation asks for its dataset three times (the test loader,
    ``SemSegEvaluator`` and its ground-truth reader), and a run evaluates the same files."""

    def __init__(self, load: Callable[[], List[Dict]]):
        self.load = load
        self._dicts: Optional[List[Dict]] = None

    def __call__(self) -> List[Dict]:
        if self._dicts is None:
            self._dicts = self.load()
        return [dict(record) for record in self._dicts]


def _register(
    name: str,
    splits: Sequence[Tuple[str, Optional[str]]],
    *,
    layout: str,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]],
    ignore_label: int = IGNORE_VALUE,
    label_map: Optional[Dict[int, int]] = None,
    prepare: Optional[Callable[[], object]] = None,
) -> None:
    """Register ``name`` with a picklable lazy loader of (image dir, mask dir) ``splits``
    (:func:`~dinov3_m2f.data.files.load_split_dicts`). Again
    with the same metadata it is a no-op; with other metadata, detectron2's ``Metadata.set``
    refuses the change (re-raised as a ValueError)."""
    splits = [(os.path.abspath(i), m if m is None else os.path.abspath(m)) for i, m in splits]
    mask_dirs = [mask_dir for _, mask_dir in splits if mask_dir is not None]
    metadata = dict(
        stuff_classes=list(classes),
        stuff_colors=[tuple(int(c) for c in rgb) for rgb in colors],
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
        image_root=os.path.commonpath([image_dir for image_dir, _ in splits]),
        **({"sem_seg_root": os.path.commonpath(mask_dirs)} if mask_dirs else {}),
        **({"label_map": dict(label_map)} if label_map is not None else {}),
    )
    if name not in DatasetCatalog.list():
        load = functools.partial(load_split_dicts, splits, layout=layout, prepare=prepare)
        DatasetCatalog.register(name, ListedOnce(load))
    try:
        MetadataCatalog.get(name).set(**metadata)
    except AssertionError as e:
        raise ValueError(
            f"dataset {name!r} is already registered with different metadata: {e}; register it "
            "under another name or remove it with DatasetCatalog.remove first"
        ) from e


def register_folder_dataset(
    name: str,
    *,
    image_dir: str,
    mask_dir: str,
    class_names: Sequence[str],
    ignore_value: int = IGNORE_VALUE,
    colors: Optional[Sequence[Sequence[int]]] = None,
) -> str:
    """Register (idempotently) a user dataset: ``image_dir/**/*.{jpg,png}`` and ``mask_dir``'s
    single-channel ``*.png`` of class ids with the same relative paths; returns ``name``, so a
    LazyConfig can write ``names=L(register_folder_dataset)(...)``.

    Args:
        name: dataset name.
        image_dir, mask_dir: the image and mask directories.
        class_names: one name per class id.
        ignore_value: mask value of ignored pixels.
        colors: optional RGB colour per class (default: a fixed generated palette).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if isinstance(class_names, str) or not class_names or not all(
            isinstance(c, str) for c in class_names):
        raise TypeError(f"class_names must be a non-empty list of strings, got {class_names!r}")
    if not isinstance(ignore_value, int) or 0 <= ignore_value < len(class_names):
        raise ValueError(
            "ignore_value must be an integer that is not a class id "
            f"(0..{len(class_names) - 1}), got {ignore_value!r}"
        )
    if colors is None:
        colors = class_colors(len(class_names))
    elif len(colors) != len(class_names) or any(len(c) != 3 for c in colors):
        raise ValueError(
            f"colors must hold one (r, g, b) per class ({len(class_names)} classes), got {colors!r}"
        )
    layout = (f"{image_dir}/<name>.jpg|png with masks {mask_dir}/<name>.png "
              f"(single-channel class ids, {ignore_value} = ignore)")
    _register(name, [(image_dir, mask_dir)], layout=layout, classes=class_names, colors=colors,
              ignore_label=ignore_value)
    return name


def register_all_synthetic(root: str) -> None:
    """Register ``synthetic_sem_seg_{train,val}`` under ``root/dinov3_m2f_synthetic``, ``root``
    being the datasets directory."""
    root = os.path.join(root, CACHE_DIR_NAME)
    layout = f"{root}/{{train,val}}/{{images,masks}}/<stem>.png (generated automatically)"
    for split in ("train", "val"):
        _register(
            f"synthetic_sem_seg_{split}",
            [(os.path.join(root, split, "images"), os.path.join(root, split, "masks"))],
            layout=layout, classes=SYNTHETIC_CLASSES, colors=SYNTHETIC_COLORS,
            prepare=functools.partial(ensure_synthetic_dataset, root),
        )


def register_all_loveda(root: str) -> None:
    """Register ``loveda_sem_seg_{train,val,test}`` (Urban and Rural together; test without
    masks) under ``root/LoveDA``, ``root`` being the datasets directory."""
    root = os.path.join(root, "LoveDA")
    layout = (f"{root}/{{Train,Val,Test}}/{{Urban,Rural}}/images_png/*.png with masks in the "
              "sibling masks_png/ (no masks for Test)")
    for split, dirname, has_masks in (("train", "Train", True), ("val", "Val", True),
                                      ("test", "Test", False)):
        domains = [os.path.join(root, dirname, domain) for domain in LOVEDA_DOMAINS]
        splits = [(os.path.join(d, "images_png"), os.path.join(d, "masks_png") if has_masks else None)
                  for d in domains]
        _register(f"loveda_sem_seg_{split}", splits, layout=layout, classes=LOVEDA_CLASSES,
                  colors=LOVEDA_COLORS, label_map=LOVEDA_LABEL_MAP)


def adjust_builtin_registrations() -> None:
    """Adjust detectron2's own ADE20K and Cityscapes semantic registrations: their files are
    listed once per process (:class:`ListedOnce`), and their metadata get ``stuff_colors``:
    Cityscapes' official train-id colours, a fixed generated palette for ADE20K."""
    by_train_id = sorted(CITYSCAPES_CATEGORIES, key=lambda c: c["trainId"])
    colors = {
        "ade20k_sem_seg": class_colors(len(ADE20K_SEM_SEG_CATEGORIES)),
        "cityscapes_fine_sem_seg": [tuple(c["color"]) for c in by_train_id],
    }
    for prefix, stuff_colors in colors.items():
        for split in ("train", "val"):
            name = f"{prefix}_{split}"
            load = DatasetCatalog[name]
            if not isinstance(load, ListedOnce):
                DatasetCatalog.remove(name)
                DatasetCatalog.register(name, ListedOnce(load))
            metadata = MetadataCatalog.get(name)
            if "stuff_colors" not in metadata.as_dict():
                metadata.set(stuff_colors=stuff_colors)


_root = datasets_root()
register_all_synthetic(_root)
register_all_loveda(_root)
adjust_builtin_registrations()

"""Dataset registration for Detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

Registered names and layouts (under ``$DETECTRON2_DATASETS``, default ``datasets``):

- ``synthetic_sem_seg_{train,val}``: ``dinov3_m2f_synthetic/`` (generated on first load).
- ``loveda_sem_seg_{train,val,test}``: ``LoveDA/{Train,Val,Test}/{Urban,Rural}/images_png`` with
  masks in the sibling ``masks_png`` (none for Test).
- ``ade20k_sem_seg_{train,val}``: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
  ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png``.
- ``cityscapes_fine_sem_seg_{train,val}``:
  ``cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``cityscapes/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``.
- any name, :func:`register_folder_dataset`: ``images/*.{jpg,png}`` and ``masks/*.png`` with the
  same stem.

Every dataset dict has ``file_name`` and (except LoveDA test) ``sem_seg_file_name``. Metadata:
``stuff_classes``, ``stuff_colors``, ``ignore_label``, ``evaluator_type``, ``image_root``,
``sem_seg_root`` and, when the mask files do not store class ids directly, ``label_map``
(raw value -> class id or ignore). LoveDA masks are used as shipped: 0 = no-data -> 255,
1..7 -> 0..6 through ``label_map``; :class:`~dinov3_m2f.d2.mapper.SemSegDatasetMapper` and
:class:`SemSegGroundTruthLoader` (for ``SemSegEvaluator``) both apply it.

Registration is cheap and idempotent: files are listed (and the synthetic dataset generated) only
when the dataset dicts are loaded; registering a name again with the same arguments is a no-op, and
with different paths an error. detectron2 registers ``ade20k_sem_seg_*`` and
``cityscapes_fine_sem_seg_*`` itself when ``detectron2.data`` is imported; those registrations are
kept (only missing metadata such as ``stuff_colors`` is added).
"""
import functools
import logging
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from dinov3_m2f.data.files import (
    IMAGE_SUFFIXES,
    MASK_SUFFIX,
    datasets_root,
    duplicate_message,
    pair_image_mask_files,
)
from dinov3_m2f.data.io import IGNORE_VALUE, read_label_mask, shifted_label_map
from dinov3_m2f.data.synthetic import (
    CACHE_DIR_NAME,
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    ensure_synthetic_dataset,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_COLORS",
    "LOVEDA_CLASSES",
    "LOVEDA_COLORS",
    "LOVEDA_LABEL_MAP",
    "SemSegGroundTruthLoader",
    "datasets_root",
    "get_dataset_dicts",
    "load_image_mask_pairs",
    "register_ade20k",
    "register_all",
    "register_cityscapes",
    "register_folder_dataset",
    "register_loveda",
    "register_synthetic",
]

# The synthetic dataset mirrors LoveDA's classes and palette.
LOVEDA_CLASSES = SYNTHETIC_CLASSES
LOVEDA_COLORS = SYNTHETIC_COLORS
# LoveDA mask files: 0 = no-data (ignored), 1..7 = the classes above.
LOVEDA_LABEL_MAP = shifted_label_map(len(LOVEDA_CLASSES))
LOVEDA_DOMAINS = ("Urban", "Rural")

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
# The official Cityscapes train-id colours.
CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
CITYSCAPES_THING_CLASSES = (
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
_CITYSCAPES_MASK_SUFFIX = "_gtFine_labelTrainIds.png"

# Metadata keys holding paths: compared after normalization when a name is registered again.
_PATH_KEYS = ("image_root", "sem_seg_root", "image_dir", "gt_dir")
_MAX_LISTED = 10  # files named in one error message
_PALETTE_SEED = 0  # seed of the generated palette for datasets without official colours

SYNTHETIC_DIR = CACHE_DIR_NAME
LOVEDA_DIR = "LoveDA"
ADE20K_DIR = "ADEChallengeData2016"
CITYSCAPES_DIR = "cityscapes"


def _generated_colors(num_classes: int) -> List[Tuple[int, int, int]]:
    rng = np.random.default_rng(_PALETTE_SEED)
    return [tuple(int(c) for c in rgb) for rgb in rng.integers(0, 256, size=(num_classes, 3))]


def _listing(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_MAX_LISTED])
    return shown + (f", ... ({len(paths)} files)" if len(paths) > _MAX_LISTED else "")


def load_image_mask_pairs(
    image_dir: str,
    mask_dir: Optional[str],
    *,
    layout: str,
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
    mask_suffix: str = MASK_SUFFIX,
) -> List[Dict]:
    """List images and their masks (matched by relative path minus suffix) as dataset dicts.

    The files are found by :func:`dinov3_m2f.data.files.pair_image_mask_files`; any gap (no
    images, an image without mask, a mask without image, two files with the same name) raises.

    Args:
        image_dir: directory searched recursively for images.
        mask_dir: directory searched recursively for masks; ``None`` for an image-only split.
        layout: human-readable expected layout, quoted in errors.
        image_suffixes: accepted image file endings (case-insensitive).
        mask_suffix: mask file ending; other files in ``mask_dir`` are not considered.

    Returns:
        Dicts with ``file_name`` (and ``sem_seg_file_name``), sorted by file name.
    """
    pairing = pair_image_mask_files(
        image_dir, mask_dir, image_suffixes=image_suffixes, mask_suffix=mask_suffix, layout=layout
    )
    if pairing.duplicates:
        raise ValueError(duplicate_message(*pairing.duplicates[0]))
    if not pairing.images:
        raise FileNotFoundError(
            f"no images ({'|'.join('*' + s for s in image_suffixes)}) found in {image_dir}; "
            f"expected layout: {layout}"
        )
    without_mask = [pairing.images[k] for k in pairing.images_without_mask]
    if without_mask:
        raise ValueError(
            f"{len(without_mask)} images have no mask (*{mask_suffix} with the same name) in "
            f"{mask_dir}: {_listing(without_mask)}; expected layout: {layout}"
        )
    without_image = [pairing.masks[k] for k in pairing.masks_without_image]
    if without_image:
        raise ValueError(
            f"{len(without_image)} masks have no image in {image_dir}: {_listing(without_image)}; "
            f"expected layout: {layout}"
        )
    return pairing.dataset_dicts()


def _same(key: str, old, new) -> bool:
    if key in _PATH_KEYS:
        return os.path.abspath(old) == os.path.abspath(new)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(_same("", a, b) for a, b in zip(old, new))
    return old == new


def _register(name: str, load: Callable[[], List[Dict]], metadata: Dict) -> None:
    """Register ``name``; a repeated registration must agree with the existing metadata."""
    if name in DatasetCatalog.list():
        existing = MetadataCatalog.get(name).as_dict()
        conflicts = {
            k: (existing[k], v)
            for k, v in metadata.items()
            if k in existing and not _same(k, existing[k], v)
        }
        if conflicts:
            details = "; ".join(
                f"{k}: registered {old!r}, requested {new!r}" for k, (old, new) in conflicts.items()
            )
            raise ValueError(
                f"dataset {name!r} is already registered with different metadata ({details}); "
                "register it under another name or remove it with DatasetCatalog.remove first"
            )
        missing = {k: v for k, v in metadata.items() if k not in existing}
        if missing:
            MetadataCatalog.get(name).set(**missing)
        return
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(**metadata)


def _sem_seg_metadata(
    *,
    image_root: str,
    sem_seg_root: Optional[str],
    classes: Sequence[str],
    colors: Sequence[Sequence[int]],
    ignore_label: int = IGNORE_VALUE,
    evaluator_type: str = "sem_seg",
    label_map: Optional[Mapping[int, int]] = None,
) -> Dict:
    metadata = {
        "stuff_classes": list(classes),
        "stuff_colors": [tuple(int(c) for c in rgb) for rgb in colors],
        "ignore_label": ignore_label,
        "evaluator_type": evaluator_type,
        "image_root": image_root,
    }
    if sem_seg_root is not None:
        metadata["sem_seg_root"] = sem_seg_root
    if label_map is not None:
        metadata["label_map"] = dict(label_map)
    return metadata


class _PairLoader:
    """Picklable zero-argument loader for ``DatasetCatalog`` (no lambdas)."""

    def __init__(self, splits: Sequence[Tuple[str, Optional[str]]], *, layout: str,
                 image_suffixes: Sequence[str] = IMAGE_SUFFIXES, mask_suffix: str = MASK_SUFFIX,
                 prepare: Optional[Callable[[], object]] = None):
        self.splits = list(splits)
        self.layout = layout
        self.image_suffixes = tuple(image_suffixes)
        self.mask_suffix = mask_suffix
        self.prepare = prepare

    def __call__(self) -> List[Dict]:
        if self.prepare is not None:
            self.prepare()
        dicts = []
        for image_dir, mask_dir in self.splits:
            dicts.extend(
                load_image_mask_pairs(
                    image_dir, mask_dir, layout=self.layout,
                    image_suffixes=self.image_suffixes, mask_suffix=self.mask_suffix,
                )
            )
        logger.info("Loaded %d images from %s", len(dicts), ", ".join(d for d, _ in self.splits))
        return dicts


def register_synthetic(
    root: Optional[str] = None, *, prefix: str = "synthetic_sem_seg"
) -> List[str]:
    """Register ``<prefix>_{train,val}``; the data is generated on the first load of the dicts.

    Args:
        root: dataset directory; default ``$DETECTRON2_DATASETS/dinov3_m2f_synthetic``.
        prefix: name prefix.

    Returns:
        The registered names.
    """
    root = root if root is not None else os.path.join(datasets_root(), SYNTHETIC_DIR)
    layout = f"{root}/{{train,val}}/{{images,masks}}/<stem>.png (generated automatically)"
    names = []
    for split in ("train", "val"):
        image_dir = os.path.join(root, split, "images")
        mask_dir = os.path.join(root, split, "masks")
        name = f"{prefix}_{split}"
        load = _PairLoader(
            [(image_dir, mask_dir)], layout=layout,
            prepare=functools.partial(ensure_synthetic_dataset, root),
        )
        _register(name, load, _sem_seg_metadata(
            image_root=image_dir, sem_seg_root=mask_dir,
            classes=SYNTHETIC_CLASSES, colors=SYNTHETIC_COLORS,
        ))
        names.append(name)
    return names


def register_loveda(root: Optional[str] = None, *, prefix: str = "loveda_sem_seg") -> List[str]:
    """Register LoveDA ``<prefix>_{train,val,test}`` (Urban and Rural together).

    The masks are used as shipped; metadata ``label_map`` turns 0 (no-data) into 255 and
    1..7 into class ids 0..6. The test split has images only.

    Args:
        root: directory holding ``Train``, ``Val`` and ``Test``; default
            ``$DETECTRON2_DATASETS/LoveDA``.
        prefix: name prefix.

    Returns:
        The registered names.
    """
    root = root if root is not None else os.path.join(datasets_root(), LOVEDA_DIR)
    layout = (f"{root}/{{Train,Val,Test}}/{{Urban,Rural}}/images_png/*.png with masks in the "
              "sibling masks_png/ (no masks for Test)")
    names = []
    splits = (("train", "Train", True), ("val", "Val", True), ("test", "Test", False))
    for split, dirname, has_masks in splits:
        split_root = os.path.join(root, dirname)
        pairs = [
            (os.path.join(split_root, domain, "images_png"),
             os.path.join(split_root, domain, "masks_png") if has_masks else None)
            for domain in LOVEDA_DOMAINS
        ]
        name = f"{prefix}_{split}"
        _register(name, _PairLoader(pairs, layout=layout), _sem_seg_metadata(
            image_root=split_root, sem_seg_root=split_root if has_masks else None,
            classes=LOVEDA_CLASSES, colors=LOVEDA_COLORS, label_map=LOVEDA_LABEL_MAP,
        ))
        names.append(name)
    return names


def register_ade20k(root: Optional[str] = None, *, prefix: str = "ade20k_sem_seg") -> List[str]:
    """Register ADE20K-150 ``<prefix>_{train,val}`` with detectron2's layout and metadata.

    Args:
        root: the ``ADEChallengeData2016`` directory; default under ``$DETECTRON2_DATASETS``.
        prefix: name prefix (detectron2's builtin registration uses the default one).

    Returns:
        The registered names.
    """
    root = root if root is not None else os.path.join(datasets_root(), ADE20K_DIR)
    layout = (f"{root}/images/{{training,validation}}/*.jpg and "
              f"{root}/annotations_detectron2/{{training,validation}}/*.png "
              "(labels minus 1, 0 -> 255; made by detectron2's datasets/prepare_ade20k_sem_seg.py)")
    classes = list(ADE20K_SEM_SEG_CATEGORIES)
    names = []
    for split, dirname in (("train", "training"), ("val", "validation")):
        image_dir = os.path.join(root, "images", dirname)
        gt_dir = os.path.join(root, "annotations_detectron2", dirname)
        name = f"{prefix}_{split}"
        load = _PairLoader([(image_dir, gt_dir)], layout=layout, image_suffixes=(".jpg",))
        _register(name, load, _sem_seg_metadata(
            image_root=image_dir, sem_seg_root=gt_dir, classes=classes,
            colors=_generated_colors(len(classes)),
        ))
        names.append(name)
    return names


def register_cityscapes(
    root: Optional[str] = None, *, prefix: str = "cityscapes_fine_sem_seg"
) -> List[str]:
    """Register Cityscapes fine ``<prefix>_{train,val}`` (19 train ids, 255 = ignore).

    Metadata matches detectron2's builtin registration (``evaluator_type="cityscapes_sem_seg"``,
    ``image_dir``/``gt_dir``) plus ``image_root``/``sem_seg_root``/``stuff_colors``; our configs
    evaluate it with ``SemSegEvaluator``.

    Args:
        root: the ``cityscapes`` directory; default under ``$DETECTRON2_DATASETS``.
        prefix: name prefix (detectron2's builtin registration uses the default one).

    Returns:
        The registered names.
    """
    root = root if root is not None else os.path.join(datasets_root(), CITYSCAPES_DIR)
    layout = (f"{root}/leftImg8bit/<split>/<city>/*{_CITYSCAPES_IMAGE_SUFFIX} and "
              f"{root}/gtFine/<split>/<city>/*{_CITYSCAPES_MASK_SUFFIX} "
              "(make labelTrainIds with cityscapesscripts/preparation/createTrainIdLabelImgs.py)")
    names = []
    for split in ("train", "val"):
        image_dir = os.path.join(root, "leftImg8bit", split)
        gt_dir = os.path.join(root, "gtFine", split)
        name = f"{prefix}_{split}"
        load = _PairLoader(
            [(image_dir, gt_dir)], layout=layout,
            image_suffixes=(_CITYSCAPES_IMAGE_SUFFIX,), mask_suffix=_CITYSCAPES_MASK_SUFFIX,
        )
        metadata = _sem_seg_metadata(
            image_root=image_dir, sem_seg_root=gt_dir, classes=CITYSCAPES_CLASSES,
            colors=CITYSCAPES_COLORS, evaluator_type="cityscapes_sem_seg",
        )
        metadata.update(
            image_dir=image_dir, gt_dir=gt_dir, thing_classes=list(CITYSCAPES_THING_CLASSES)
        )
        _register(name, load, metadata)
        names.append(name)
    return names


def register_folder_dataset(
    name: str,
    *,
    image_dir: str,
    mask_dir: str,
    class_names: Sequence[str],
    ignore_value: int = IGNORE_VALUE,
    colors: Optional[Sequence[Sequence[int]]] = None,
) -> str:
    """Register a user dataset: ``image_dir/*.{jpg,png}`` and ``mask_dir/*.png`` with equal stems.

    Masks are single-channel PNGs of class ids ``0..len(class_names)-1``, ``ignore_value`` = ignore.
    Returns the name, so a LazyConfig can write ``names=L(register_folder_dataset)(...)``.

    Args:
        name: dataset name.
        image_dir: image directory (searched recursively).
        mask_dir: mask directory (same relative paths, ``.png``).
        class_names: one name per class id.
        ignore_value: mask value of ignored pixels.
        colors: optional RGB colour per class (default: a fixed generated palette).

    Returns:
        ``name``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if (
        isinstance(class_names, str)
        or not class_names
        or not all(isinstance(c, str) for c in class_names)
    ):
        raise TypeError(f"class_names must be a non-empty list of strings, got {class_names!r}")
    if not isinstance(ignore_value, int) or 0 <= ignore_value < len(class_names):
        raise ValueError(
            "ignore_value must be an integer that is not a class id "
            f"(0..{len(class_names) - 1}), got {ignore_value!r}"
        )
    if colors is None:
        colors = _generated_colors(len(class_names))
    elif len(colors) != len(class_names) or any(len(c) != 3 for c in colors):
        raise ValueError(
            f"colors must hold one (r, g, b) per class ({len(class_names)} classes), got {colors!r}"
        )
    layout = (f"{image_dir}/<name>.jpg|png with masks {mask_dir}/<name>.png "
              f"(single-channel class ids, {ignore_value} = ignore)")
    load = _PairLoader([(image_dir, mask_dir)], layout=layout)
    _register(name, load, _sem_seg_metadata(
        image_root=image_dir, sem_seg_root=mask_dir, classes=list(class_names),
        colors=colors, ignore_label=ignore_value,
    ))
    return name


# Standard registrations: (function, name prefix, splits, directory under $DETECTRON2_DATASETS).
_STANDARD_DATASETS = (
    (register_synthetic, "synthetic_sem_seg", ("train", "val"), SYNTHETIC_DIR),
    (register_loveda, "loveda_sem_seg", ("train", "val", "test"), LOVEDA_DIR),
    (register_ade20k, "ade20k_sem_seg", ("train", "val"), ADE20K_DIR),
    (register_cityscapes, "cityscapes_fine_sem_seg", ("train", "val"), CITYSCAPES_DIR),
)


def register_all(root: Optional[str] = None) -> List[str]:
    """Register every standard dataset whose names are not registered yet.

    Names registered earlier (by detectron2's builtin code, or by an explicit ``register_*`` call
    with a custom root) are kept. Cheap: no file is read.

    Args:
        root: directory holding the datasets; default ``$DETECTRON2_DATASETS``.

    Returns:
        All standard dataset names.
    """
    root = root if root is not None else datasets_root()
    registered = set(DatasetCatalog.list())
    names = []
    for register, prefix, splits, dirname in _STANDARD_DATASETS:
        split_names = [f"{prefix}_{split}" for split in splits]
        if not registered.issuperset(split_names):
            register(os.path.join(root, dirname), prefix=prefix)
        names.extend(split_names)
    return names


def get_dataset_dicts(names: Union[str, Sequence[str]], **kwargs) -> List[Dict]:
    """:func:`register_all`, then detectron2's ``get_detection_dataset_dicts(names, **kwargs)``.

    Use this in LazyConfigs so dataset names resolve without a separate registration step.

    Args:
        names: a dataset name or a list of names.
        kwargs: forwarded to ``get_detection_dataset_dicts`` (e.g. ``filter_empty``).

    Returns:
        The concatenated dataset dicts.
    """
    register_all()
    return get_detection_dataset_dicts(names, **kwargs)


class SemSegGroundTruthLoader:
    """Reads a ground-truth mask of a registered dataset as class ids (applies ``label_map``).

    Pass it as ``SemSegEvaluator(sem_seg_loading_fn=...)`` so evaluation sees the same labels as
    training, e.g. LoveDA's raw 1..7 as 0..6 and 0 as 255.

    Args:
        dataset_name: registered dataset name (standard datasets are registered on demand).
    """

    def __init__(self, dataset_name: str):
        register_all()
        if dataset_name not in DatasetCatalog.list():
            raise ValueError(f"dataset {dataset_name!r} is not registered")
        metadata = MetadataCatalog.get(dataset_name)
        self.dataset_name = dataset_name
        self.label_map = metadata.get("label_map")
        self.num_classes = len(metadata.stuff_classes)
        self.ignore_label = metadata.ignore_label

    def __call__(self, filename: str, dtype=int) -> np.ndarray:
        """Returns the mask [H, W] with class ids and ``ignore_label``, as ``dtype``."""
        labels = read_label_mask(
            filename, label_map=self.label_map, num_classes=self.num_classes,
            ignore_value=self.ignore_label,
        )
        return labels.astype(dtype)

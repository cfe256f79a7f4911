"""Finding the files of a semantic segmentation dataset, or of an inference run, on disk (no
detectron2).

Images and masks are paired by their path relative to the image or mask directory, minus the file
ending (``images/a/1.jpg`` pairs with ``masks/a/1.png``). :func:`pair_image_mask_files` only
collects what it finds; the callers decide what a gap means: :func:`load_split_dicts` (the dataset
registration) raises one error, the dataset checker reports every unpaired file.
:func:`collect_image_files` expands the inputs of the inference tools (``tools/demo.py``,
``tools/infer_onnx.py``).
"""
import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..listing import short_list

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "INPUT_IMAGE_SUFFIXES",
    "collect_image_files",
    "MASK_SUFFIX",
    "FilePairing",
    "datasets_root",
    "duplicate_message",
    "list_files",
    "load_split_dicts",
    "pair_image_mask_files",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".png"
# Files the inference tools take from an input folder.
INPUT_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# How many files (or values) one error or warning message lists.


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` with ``~`` expanded (default ``datasets``), like detectron2."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _walk_following_links(directory: str) -> Iterator[Tuple[str, List[str], List[str]]]:
    """``os.walk`` in sorted order, following symbolic links to folders, each real folder once."""
    visited = {os.path.realpath(directory)}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            if real in visited:
                logger.warning("Skipping %s: it leads to %s, which is already listed (a link "
                               "loop or a second link to one folder)", path, real)
                continue
            visited.add(real)
            kept.append(name)
        dirnames[:] = kept
        yield dirpath, dirnames, filenames


def list_files(
    directory: str, suffixes: Sequence[str]
) -> Tuple[Dict[str, str], List[Tuple[str, str]]]:
    """Files under ``directory`` (recursively) ending in one of ``suffixes`` (case-insensitive).

    Args:
        directory: directory to search.
        suffixes: accepted file endings, e.g. ``(".png",)`` or ``("_leftImg8bit.png",)``.

    Returns:
        (key -> path, where the key is the path relative to ``directory`` minus the ending;
        (kept path, other path) for every further file with an already-seen key, e.g. ``a.jpg``
        and ``a.png``). Walked in sorted order, so the first file in that order is kept.
        Symbolic links to folders are followed (data often lives on another file system); a
        folder reached a second time (a link loop, or two links to one folder) is skipped with
        a warning naming the link.
    """
    endings = tuple(s.lower() for s in suffixes)
    found: Dict[str, str] = {}
    duplicates: List[Tuple[str, str]] = []
    for dirpath, dirnames, filenames in _walk_following_links(directory):
        for filename in sorted(filenames):
            ending = next((s for s in endings if filename.lower().endswith(s)), None)
            if ending is None:
                continue
            path = os.path.join(dirpath, filename)
            key = os.path.relpath(path, directory)[: -len(ending)]
            if key in found:
                duplicates.append((found[key], path))
            else:
                found[key] = path
    return found, duplicates


def duplicate_message(kept: str, other: str) -> str:
    """The error text for two files that :func:`list_files` gives the same key."""
    return (
        f"{kept} and {other} have the same name; images and masks are paired by name without "
        "the file ending, so rename one of them"
    )


@dataclass
class FilePairing:
    """Result of :func:`pair_image_mask_files`.

    Attributes:
        images: key -> image path.
        masks: key -> mask path; ``None`` for an image-only split or when there are no images.
        duplicates: (kept path, other path) of files that share a key with an earlier one.
    """

    images: Dict[str, str]
    masks: Optional[Dict[str, str]]
    duplicates: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def images_without_mask(self) -> List[str]:
        """Keys of images that have no mask, sorted (empty when ``masks`` is ``None``)."""
        return [] if self.masks is None else sorted(self.images.keys() - self.masks.keys())

    @property
    def masks_without_image(self) -> List[str]:
        """Keys of masks that have no image, sorted."""
        return [] if self.masks is None else sorted(self.masks.keys() - self.images.keys())

    def dataset_dicts(self) -> List[Dict[str, str]]:
        """``file_name`` (and ``sem_seg_file_name``) of every paired image, sorted by key.

        Images without a mask are left out; an image-only split gives every image.
        """
        if self.masks is None:
            return [{"file_name": self.images[key]} for key in sorted(self.images)]
        return [
            {"file_name": self.images[key], "sem_seg_file_name": self.masks[key]}
            for key in sorted(self.images.keys() & self.masks.keys())
        ]


def _check_directory(directory: str, what: str, layout: Optional[str]) -> None:
    if not os.path.isdir(directory):
        hint = f"; expected layout: {layout}" if layout is not None else ""
        raise FileNotFoundError(f"{what} directory {directory} does not exist{hint}")


def pair_image_mask_files(
    image_dir: str,
    mask_dir: Optional[str],
    *,
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
    mask_suffix: str = MASK_SUFFIX,
    layout: Optional[str] = None,
) -> FilePairing:
    """List the images of ``image_dir`` and the masks of ``mask_dir`` by key.

    Args:
        image_dir: directory searched recursively for images.
        mask_dir: directory searched recursively for masks; ``None`` for an image-only split.
        image_suffixes: accepted image file endings (case-insensitive).
        mask_suffix: mask file ending; other files in ``mask_dir`` are not considered.
        layout: human-readable expected layout, quoted when a directory does not exist.

    Returns:
        The :class:`FilePairing` (possibly with no images, unpaired files or duplicates).

    Raises:
        FileNotFoundError: ``image_dir`` does not exist, or ``mask_dir`` does not exist while
            ``image_dir`` holds images; names the directory.
    """
    _check_directory(image_dir, "image", layout)
    images, duplicates = list_files(image_dir, image_suffixes)
    if mask_dir is None or not images:
        # Without images there is nothing to pair: the mask directory is not read.
        return FilePairing(images=images, masks=None, duplicates=duplicates)
    _check_directory(mask_dir, "mask", layout)
    masks, mask_duplicates = list_files(mask_dir, (mask_suffix,))
    return FilePairing(images=images, masks=masks, duplicates=duplicates + mask_duplicates)


def collect_image_files(patterns: Sequence[str], *, suffixes: Sequence[str] = INPUT_IMAGE_SUFFIXES) -> List[str]:
    """Expand image files, folders (their images, sorted, not recursive) and glob patterns into a
    list of files, in order and without duplicates.

    Args:
        patterns: the command-line inputs.
        suffixes: lower-case file name endings of the images listed from folders.

    Returns:
        The files.

    Raises:
        FileNotFoundError: an input matches no file.
        ValueError: two files share a name stem, so their outputs would overwrite each other.
    """
    files: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [
                os.path.join(pattern, name)
                for name in sorted(os.listdir(pattern))
                if name.lower().endswith(tuple(suffixes))
            ]
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        if not found:
            raise FileNotFoundError(f"input {pattern!r} matches no image file")
        files.extend(f for f in found if f not in files)
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(
            f"several inputs share the file name stem(s) {clashes}; their outputs would overwrite "
            "each other, run them separately"
        )
    return files


def load_split_dicts(
    splits: Sequence[Tuple[str, Optional[str]]],
    *,
    layout: str,
    prepare: Optional[Callable[[], object]] = None,
) -> List[Dict]:
    """After ``prepare()``, the dataset dicts (``file_name``, ``sem_seg_file_name``) of images and
    masks paired by relative path minus suffix (:func:`pair_image_mask_files`) in each
    (image dir, mask dir or None) split: what the dataset registration loads.

    Args:
        splits: (image directory, mask directory or ``None`` for images only).
        layout: human-readable expected layout, quoted in every error.
        prepare: called first (e.g. generates the synthetic dataset).

    Raises:
        FileNotFoundError, ValueError: a missing directory, no images, an image without mask, a
            mask without image, two files with the same name; each names the files.
    """
    if prepare is not None:
        prepare()
    dicts = []
    for image_dir, mask_dir in splits:
        pairing = pair_image_mask_files(image_dir, mask_dir, layout=layout)
        if pairing.duplicates:
            raise ValueError(duplicate_message(*pairing.duplicates[0]))
        if not pairing.images:
            raise FileNotFoundError(f"no images found in {image_dir}; expected layout: {layout}")
        without_mask = [pairing.images[k] for k in pairing.images_without_mask]
        if without_mask:
            raise ValueError(
                f"{len(without_mask)} images have no mask (*.png with the same name) in "
                f"{mask_dir}: {short_list(without_mask, noun='files')}; expected layout: {layout}"
            )
        without_image = [pairing.masks[k] for k in pairing.masks_without_image]
        if without_image:
            raise ValueError(
                f"{len(without_image)} masks have no image in {image_dir}: "
                f"{short_list(without_image, noun='files')}; expected layout: {layout}"
            )
        dicts.extend(pairing.dataset_dicts())
    logger.info("Loaded %d images from %s", len(dicts), ", ".join(d for d, _ in splits))
    return dicts

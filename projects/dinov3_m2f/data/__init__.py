"""data of dinov3_m2f (plain PyTorch; no detectron2 import)."""
from .bad_samples import BadSampleSkipper, TooManyBadSamplesError
from .files import FilePairing, datasets_root, pair_image_mask_files
from .image import ImageHeader, UnreadableImageError, read_image, read_image_header
from .masks import (
    IGNORE_VALUE,
    MASK_FORMAT_HINT,
    check_label_values,
    check_same_size,
    convert_label_png,
    read_image_and_mask,
    read_label_mask,
    read_mask_for_image,
    shifted_label_map,
    write_label_png,
)
from .scan import DatasetScanError, ScanResult, scan_dataset
from .synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    default_synthetic_root,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    is_complete_synthetic_dataset,
)

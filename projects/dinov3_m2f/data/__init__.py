"""data of dinov3_m2f (plain PyTorch; no detectron2 import)."""
from .io import (
    MASK_FORMAT_HINT,
    apply_label_map,
    check_label_values,
    check_same_size,
    convert_label_png,
    read_label_mask,
    write_label_png,
)
from .synthetic import (
    IGNORE_VALUE,
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    default_synthetic_root,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    is_complete_synthetic_dataset,
)

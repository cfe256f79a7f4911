"""LoveDA (land-cover domain adaptation, 0.3 m remote sensing): classes, palette and mask values."""
from .masks import shifted_label_map

__all__ = ["LOVEDA_CLASSES", "LOVEDA_COLORS", "LOVEDA_DOMAINS", "LOVEDA_LABEL_MAP"]

LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
# LoveDA's usual visualization palette (RGB), one colour per class above.
LOVEDA_COLORS = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)
# LoveDA mask files: 0 = no-data (ignored), 1..7 = the classes above.
LOVEDA_LABEL_MAP = shifted_label_map(len(LOVEDA_CLASSES))
# The two scene types of every split, one folder each.
LOVEDA_DOMAINS = ("Urban", "Rural")

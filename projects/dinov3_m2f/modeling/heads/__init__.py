"""Per-pixel decode heads (plain PyTorch): UPerNet and linear."""

from .linear import LinearHead
from .upernet import UPerNetHead

__all__ = ["LinearHead", "UPerNetHead"]

"""How closely an exported model reproduces PyTorch (numpy only)."""
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_LABEL_AGREEMENT", "PROBS_ATOL", "Parity", "compare_probs"]

# Acceptance of an export: per-class probabilities within this max-abs difference ...
PROBS_ATOL = 1e-4
# ... and at least this fraction of identical labels (argmax; near-ties may flip).
MIN_LABEL_AGREEMENT = 0.999


@dataclass(frozen=True)
class Parity:
    """Agreement of two probability maps.

    Attributes:
        max_abs: largest absolute difference of the probabilities.
        label_agreement: fraction of pixels with the same argmax label.
    """

    max_abs: float
    label_agreement: float

    @property
    def ok(self) -> bool:
        """Within :data:`PROBS_ATOL` and :data:`MIN_LABEL_AGREEMENT`."""
        return self.max_abs <= PROBS_ATOL and self.label_agreement >= MIN_LABEL_AGREEMENT

    def __str__(self) -> str:
        return f"probabilities max-abs {self.max_abs:.2e}, labels {100 * self.label_agreement:.3f} % identical"


def compare_probs(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Compare class probabilities [..., C, H, W] (C on axis -3) of a reference and a candidate.

    Args:
        reference: e.g. the PyTorch model's probabilities [B, C, H, W].
        candidate: the exported model's, same shape.

    Returns:
        Their :class:`Parity`.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    max_abs = float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max())
    agreement = float((reference.argmax(axis=-3) == candidate.argmax(axis=-3)).mean())
    return Parity(max_abs=max_abs, label_agreement=agreement)

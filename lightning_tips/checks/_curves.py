"""Pure verdicts on loss histories, shared by the learning-curve monitor and EarlyStopping
(tips T2, R2.9, R4.9, T10).

Example:
    >>> overfitting_verdict([1.0, 0.8, 0.6, 0.5, 0.4], [0.9, 0.7, 0.75, 0.8, 0.85], patience=3)
    {'best_val': 0.7, 'val_now': 0.85, 'train_at_best': 0.8, 'train_now': 0.4, 'checks_since_best': 3.0}
    >>> overfitting_verdict([1.0, 0.8, 0.6], [0.9, 0.7, 0.6], patience=3) is None
    True
    >>> flat_loss_verdict([2.30, 2.30, 2.29, 2.30])
    {'first': 2.3, 'best_later': 2.29, 'ratio': 0.9957, 'points': 4.0}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["flat_loss_verdict", "overfitting_verdict"]


def overfitting_verdict(
    train_losses: Sequence[float], val_losses: Sequence[float], patience: int = 3
) -> dict[str, float] | None:
    """Figures when the validation loss has stayed above its best for ``patience`` checks while the
    training loss fell below its value at the best check; else ``None``.

    The two histories are aligned per validation check (the training loss is the one at that check).
    """
    n = min(len(train_losses), len(val_losses))
    if patience < 1 or n < patience + 1:
        return None
    train, val = list(train_losses)[-n:], list(val_losses)[-n:]
    if any(math.isnan(v) for v in val):
        return None
    best = min(range(n), key=lambda i: val[i])
    since = n - 1 - best
    if since < patience or not all(v > val[best] for v in val[best + 1 :]):
        return None
    if not train[-1] < train[best]:
        return None
    return {
        "best_val": round(val[best], 4),
        "val_now": round(val[-1], 4),
        "train_at_best": round(train[best], 4),
        "train_now": round(train[-1], 4),
        "checks_since_best": float(since),
    }


def flat_loss_verdict(losses: Sequence[float], min_points: int = 3, ratio: float = 0.98) -> dict[str, float] | None:
    """Figures when no later loss went below ``ratio`` x the first one (over at least ``min_points``
    points): the training loss does not go down (R2.9); else ``None``."""
    values = [v for v in losses if math.isfinite(v)]
    if len(values) < min_points:
        return None
    first, best_later = values[0], min(values[1:])
    if best_later <= ratio * first:
        return None
    return {
        "first": round(first, 4),
        "best_later": round(best_later, 4),
        "ratio": round(best_later / first, 4) if first else math.inf,
        "points": float(len(values)),
    }

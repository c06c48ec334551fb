"""Pure verdicts on loss histories, shared by the learning-curve monitor and EarlyStopping
(tips T2, R2.9, R4.9, T10): one decision function per code, in one place.

Both verdicts are noise-aware. The check-to-check noise of a curve is estimated from its second
differences (robust to a smooth trend: for independent noise of std s on each point,
``x[i+1] - 2 x[i] + x[i-1]`` has std ``sqrt(6) s``; the median absolute value / 0.6745 estimates
that std), so a wobble of a healthy curve is not read as a trend.

``overfitting`` (:func:`overfitting_verdict`), a **warning** only when all of:

- *sustained*: the validation loss has been above its best for ``patience`` checks while the training
  loss fell below its value at the best check;
- *significant*: the rise (now vs best) exceeds 3 x the check-to-check noise;
- *material*: the rise is at least ``min_rise`` (10%) of the best value;
- *not contradicted*: a rise below ``strong_rise`` (25%) also needs the validation accuracy, when
  known, to have fallen from its value at the best check (a rise of 25% or more is material on its
  own: the predicted probabilities have got much worse, whatever the arg-max does).

A significant, sustained rise of 10-25% with validation accuracy that did *not* fall is an ``info``
(the model grows over-confident on a few samples; it does not cost accuracy yet). Anything weaker
is no finding.

``not-learning`` (:func:`flat_loss_verdict`), a **warning** when after ``min_points`` points no
training loss went below 0.98 x the first, nor down by more than 0.5% and 3 x the noise; an
``info`` ("learns, slowly") when the loss fell beyond that but by less than 2%; nothing when the
history holds a non-finite loss (the non-finite guard reports that root cause).

Example:
    >>> v = overfitting_verdict([1.0, 0.8, 0.6, 0.5, 0.4], [0.9, 0.7, 0.75, 0.8, 0.85], patience=3)
    >>> v.severity, v.figures["best_val"], v.figures["val_now"], v.figures["checks_since_best"]
    ('warning', 0.7, 0.85, 3.0)
    >>> overfitting_verdict([1.0, 0.8, 0.6], [0.9, 0.7, 0.6], patience=3) is None
    True
    >>> overfitting_verdict([1.0, 0.8, 0.6, 0.5, 0.4], [0.50, 0.4831, 0.4840, 0.4845, 0.4848], patience=3) is None
    True
    >>> flat_loss_verdict([2.30, 2.30, 2.29, 2.30]).figures
    {'first': 2.3, 'best_later': 2.29, 'ratio': 0.9957, 'points': 4.0, 'noise': 0.0091}
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from lightning_tips.checks._verdicts import Verdict

__all__ = ["curve_noise", "flat_loss_verdict", "overfitting_verdict"]


def curve_noise(values: Sequence[float]) -> float:
    """The check-to-check noise (std) of a curve, from the median absolute second difference; 0.0 with
    fewer than 3 finite points. Robust to a linear trend and to one kink (the curve's minimum).

    Example:
        >>> round(curve_noise([1.0, 0.9, 0.8, 0.7]), 12)  # a straight line: no noise
        0.0
        >>> round(curve_noise([1.0, 1.1, 1.0, 1.1, 1.0]), 3)
        0.121
    """
    x = [v for v in values if math.isfinite(v)]
    if len(x) < 3:
        return 0.0
    second = [abs(x[i + 1] - 2 * x[i] + x[i - 1]) for i in range(1, len(x) - 1)]
    return statistics.median(second) / 0.6745 / math.sqrt(6.0)


def overfitting_verdict(
    train_losses: Sequence[float],
    val_losses: Sequence[float],
    patience: int = 3,
    val_accs: Sequence[float] | None = None,
    *,
    min_rise: float = 0.10,
    strong_rise: float = 0.25,
    sign: float = 1.0,
    val_name: str = "the validation loss",
    train_name: str = "the training loss",
) -> Verdict | None:
    """The ``overfitting`` verdict on histories aligned per validation check (lower is better; pass the
    negated metric and ``sign=-1`` for a higher-is-better one: figures and message show ``sign x value``);
    ``None`` when there is no finding. See the module docstring for the rule.

    Figures: ``best_val``, ``val_now``, ``train_at_best``, ``train_now``, ``checks_since_best``,
    ``rise`` (relative to the best), ``noise`` (check-to-check std), and ``acc_at_best``/``acc_now`` when
    validation accuracy is known.

    Example:
        >>> train = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3]
        >>> overfitting_verdict(train, [1.0, 0.9, 0.95, 1.05, 1.15, 1.3]).severity  # +44%, far beyond the noise
        'warning'
        >>> overfitting_verdict(train, [0.4831, 0.47, 0.475, 0.48, 0.4848, 0.484]) is None  # +3%: noise, not material
        True
    """
    n = min(len(train_losses), len(val_losses))
    if patience < 1 or n < patience + 1:
        return None
    train, val = list(train_losses)[-n:], list(val_losses)[-n:]
    if not all(math.isfinite(v) for v in val) or not all(math.isfinite(t) for t in train):
        return None
    best = min(range(n), key=lambda i: val[i])
    since = n - 1 - best
    noise = curve_noise(val)
    if since < patience or not all(v > val[best] for v in val[best + 1 :]):
        return None
    if not train[-1] < train[best]:
        return None
    rise = val[-1] - val[best]
    relative = rise / abs(val[best]) if val[best] else math.inf
    if rise <= 3.0 * noise or relative < min_rise:
        return None  # within the noise, or not material
    figures = {
        "best_val": round(sign * val[best], 4),
        "val_now": round(sign * val[-1], 4),
        "train_at_best": round(train[best], 4),
        "train_now": round(train[-1], 4),
        "checks_since_best": float(since),
        "rise": round(relative, 4),
        "noise": round(noise, 4),
    }
    accs = list(val_accs)[-n:] if val_accs is not None and len(val_accs) >= n else None
    acc_known = accs is not None and math.isfinite(accs[best]) and math.isfinite(accs[-1])
    evidence = (
        f"{val_name} has been worse than its best ({figures['best_val']:.4g}) for {since} checks (now "
        f"{figures['val_now']:.4g}, {relative:.0%} worse; check-to-check noise {noise:.2g}) while {train_name} "
        f"fell from {figures['train_at_best']:.4g} to {figures['train_now']:.4g}"
    )
    if acc_known:
        assert accs is not None
        figures["acc_at_best"], figures["acc_now"] = round(accs[best], 4), round(accs[-1], 4)
        if accs[-1] >= accs[best] and relative < strong_rise:
            return Verdict(
                "overfitting", "info",
                f"{evidence}; the validation accuracy did not fall ({accs[best]:.4g} -> {accs[-1]:.4g}): the model "
                "grows over-confident on some validation samples, which costs no accuracy yet",
                figures=figures,
            )  # fmt: skip
        if accs[-1] < accs[best]:
            evidence += f", and the validation accuracy fell from {accs[best]:.4g} to {accs[-1]:.4g}"
    return Verdict("overfitting", "warning", f"{evidence}: the model is overfitting", figures=figures)


def flat_loss_verdict(
    losses: Sequence[float], min_points: int = 3, ratio: float = 0.98, slow: float = 0.005
) -> Verdict | None:
    """The ``not-learning`` verdict on the training loss per point: a ``warning`` when no later loss went
    below ``ratio`` x the first, nor down by more than ``slow`` (0.5%) of the first and 3 x the noise (over
    at least ``min_points`` points); an ``info`` ("learns, slowly") when it fell by more than that but less
    than ``1 - ratio``; ``None`` when it learns, with too few points, or when a loss is non-finite (that
    root cause is the non-finite guard's).

    Figures: ``first``, ``best_later``, ``ratio`` (best later / first), ``points``, ``noise``.

    Example:
        >>> flat_loss_verdict([2.30, 2.30, 2.299, 2.301]).severity
        'warning'
        >>> flat_loss_verdict([2.3, 1.5, 1.0]) is None
        True
    """
    values = list(losses)
    if len(values) < min_points or not all(math.isfinite(v) for v in values):
        return None
    first, best_later = values[0], min(values[1:])
    if best_later <= ratio * first:
        return None
    noise = curve_noise(values)
    figures = {
        "first": round(first, 4),
        "best_later": round(best_later, 4),
        "ratio": round(best_later / first, 4) if first else math.inf,
        "points": float(len(values)),
        "noise": round(noise, 4),
    }
    if first - best_later > max(3.0 * noise, slow * first):
        return Verdict(
            "not-learning", "info",
            f"the training loss goes down slowly: first {first:.4g}, best since {best_later:.4g} over {len(values)} "
            f"points ({figures['ratio']:.1%} of the first, beyond the noise {noise:.2g}, but above {ratio:.0%})",
            figures=figures,
        )  # fmt: skip
    return Verdict(
        "not-learning", "warning",
        f"the training loss did not go down over the first {len(values)} points (epochs): first {first:.4g}, best "
        f"since {best_later:.4g} ({figures['ratio']:.1%} of the first; a learning model gets below {ratio:.0%})",
        figures=figures,
    )  # fmt: skip

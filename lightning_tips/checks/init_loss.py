"""Pre-flight: the loss at init, and whether it is averaged over the batch (tips R2.4, R2.5, T9, T13, P13).

A well-initialised classifier predicts (about) uniform probabilities, so its first cross-entropy is
``log C`` for ``C`` classes; with the output bias set to the log prior (R2.5, ``OutputBiasInit``)
it is the prior's entropy ``H(p)``. A regression output that starts at the target mean gives an MSE
equal to the target variance. The check runs the user's own ``training_step`` once on a copy, reads
the loss function it called and what was fed to it (see
:func:`~lightning_tips.checks.output_activation.trace_training_step`), and compares:

- ``init-loss`` (warning): cross-entropy / NLL / BCE with ``|measured - expected| > max(0.5, 0.25 x
  expected)`` for both ``expected = log C`` (``log 2`` per BCE output) and ``expected = H(prior)``
  of the batch's labels; MSE above ``2 x`` the target variance.
- ``loss-reduction`` (warning): the loss function was called with ``reduction="sum"``, or the
  ``training_step`` loss on the full batch is ``n / (n // 2)`` (~2, within 25%) times the loss on
  its first half (a sum over samples: the effective learning rate then scales with the batch size,
  T13). The initial-loss comparison then uses the per-sample loss.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch

from lightning_tips._utils import apply_to_tensors, batch_size, step_loss
from lightning_tips.checks._preflight import CardLine, CheckSkipped, PreflightCheck, Verdict, settle
from lightning_tips.checks.output_activation import LossCall, traced_copy

__all__ = ["InitialLossCheck", "expected_initial_loss", "init_loss_verdict", "reduction_verdict"]

CLASS_LOSSES = ("cross_entropy", "nll_loss")
BINARY_LOSSES = ("binary_cross_entropy", "binary_cross_entropy_with_logits")
SUM_RATIO_TOLERANCE = 0.25


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _binary_entropy(p: torch.Tensor) -> float:
    p = p.clamp(1e-7, 1 - 1e-7)
    return float((-(p * p.log()) - (1 - p) * (1 - p).log()).mean())


def expected_initial_loss(call: LossCall) -> dict[str, float] | None:
    """What a well-initialised output gives for this loss call, or ``None`` for a loss it does not know.

    Cross-entropy / NLL: ``uniform = log C`` and ``prior`` = entropy of the batch's class frequencies
    (``classes = C``). BCE (with or without logits): ``uniform = log 2`` and ``prior`` = mean binary
    entropy of each output's positive rate. MSE: ``variance`` of the targets (per output, averaged)
    and their ``target_mean``.

    Example:
        >>> z, y = torch.zeros(8, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
        >>> fig = expected_initial_loss(LossCall("cross_entropy", z, y, "mean", torch.tensor(1.386)))
        >>> round(fig["uniform"], 3), round(fig["prior"], 3), fig["classes"]
        (1.386, 1.386, 4.0)
    """
    z, t = call.input.detach().float(), call.target
    if t is None:
        return None
    if call.name in CLASS_LOSSES:
        if z.dim() < 2:
            return None
        c = int(z.shape[1])
        if t.is_floating_point() and t.shape == z.shape:  # class probabilities
            p = t.float().movedim(1, -1).reshape(-1, c).mean(0)
        else:
            valid = t[(t >= 0) & (t < c)].long()
            if valid.numel() == 0:
                return None
            p = torch.bincount(valid.flatten(), minlength=c).float() / valid.numel()
        return {"uniform": math.log(c), "prior": _entropy(p), "classes": float(c)}
    if call.name in BINARY_LOSSES:
        tf = t.float()
        p = tf.reshape(tf.shape[0], -1).mean(0) if tf.dim() >= 2 else tf.mean().reshape(1)
        return {"uniform": math.log(2), "prior": _binary_entropy(p), "classes": 2.0}
    if call.name == "mse_loss":
        tf = t.float()
        flat = tf.reshape(tf.shape[0], -1) if tf.dim() >= 2 else tf.reshape(-1, 1)
        if flat.shape[0] < 2:
            return None
        return {"variance": float(flat.var(0, unbiased=False).mean()), "target_mean": float(flat.mean())}
    return None


def _per_sample(call: LossCall) -> float:
    """The loss averaged over elements, whatever ``reduction`` the call used."""
    value = call.value.detach().float()
    if call.reduction == "none":
        return float(value.mean())
    if call.reduction != "sum":
        return float(value)
    if call.name in CLASS_LOSSES and call.target is not None and not call.target.is_floating_point():
        count = int(((call.target >= 0) & (call.target < call.input.shape[1])).sum()) if call.input.dim() >= 2 else 1
    elif call.name in CLASS_LOSSES and call.input.dim() >= 2:
        count = call.input.numel() // call.input.shape[1]
    else:
        count = call.input.numel()
    return float(value) / max(count, 1)


def init_loss_verdict(call: LossCall) -> Verdict:
    """The ``init-loss`` verdict for the first loss call of ``training_step`` on the untrained model.

    Example:
        >>> z, y = 20 * torch.randn(64, 10), torch.arange(64) % 10
        >>> v = init_loss_verdict(LossCall("cross_entropy", z, y, "mean", torch.nn.functional.cross_entropy(z, y)))
        >>> v.severity, v.message.split(" vs ")[1][:12]
        ('warning', 'log(10)=2.3 ')
    """
    code = "init-loss"
    expected = expected_initial_loss(call)
    if expected is None:
        raise CheckSkipped(f"the expected initial loss of {call.name} is unknown (init-loss knows cross-entropy, "
                           "nll_loss, BCE and mse_loss)")
    measured = _per_sample(call)
    if not math.isfinite(measured):
        return Verdict(code, "warning", f"initial loss is {measured} ({call.name}; see nonfinite-loss)",
                       {"measured": measured})
    per = " per element" if call.reduction == "sum" else ""
    if "variance" in expected:
        var, mean = expected["variance"], expected["target_mean"]
        figures = {"measured": measured, "variance": var, "target_mean": mean}
        text = f"initial loss {measured:.3g}{per} vs target variance {var:.3g} ({call.name}, target mean {mean:.3g})"
        if var <= 1e-12:
            raise CheckSkipped(f"the targets of {call.name} are constant in this batch")
        if measured > 2 * var:
            advice = ("standardise the regression targets (zero mean, unit variance) or set the output bias to the "
                      "target mean (R2.5, `OutputBiasInit`); initialise the output layer small (T9)")
            return Verdict(code, "warning", f"{text}: more than 2x the variance", figures, advice=advice)
        return Verdict(code, None, text, figures)
    uniform, prior, c = expected["uniform"], expected["prior"], int(expected["classes"])
    figures = {"measured": measured, "expected": uniform, "prior_entropy": prior, "classes": float(c)}
    name = f"log({c})" if call.name in CLASS_LOSSES else "log(2)"
    text = f"initial loss {measured:.3g}{per} vs {name}={uniform:.3g} ({call.name})"
    imbalanced = prior < 0.9 * uniform
    if imbalanced:
        text += f", prior entropy {prior:.3g}"
    if any(abs(measured - e) <= max(0.5, 0.25 * e) for e in (uniform, prior)):
        return Verdict(code, None, text, figures)
    if measured > uniform:
        why = "the untrained model is confidently wrong: too-large initial logits (T9)"
    else:
        why = "the untrained model is already confident: check for labels leaking into the inputs"
    advice = "initialise the output layer small (T9)"
    if imbalanced:
        advice += (f" and its bias to the log prior so the loss starts at the prior entropy {prior:.3g} "
                   "(R2.5, `OutputBiasInit`)")
    else:
        advice += " and its bias to the prior (R2.5, `OutputBiasInit`)"
    return Verdict(code, "warning", f"{text}: {why}", figures, advice=advice)


def reduction_verdict(full: float, half: float, n: int, n_half: int) -> Verdict:
    """The ``loss-reduction`` verdict from the ``training_step`` loss on ``n`` samples and on the first
    ``n_half``: a mean gives a ratio ~1, a sum ``n / n_half`` (flagged within 25%).

    Example:
        >>> reduction_verdict(147.4, 73.9, 64, 32).severity, reduction_verdict(2.31, 2.29, 64, 32).severity
        ('warning', None)
    """
    code = "loss-reduction"
    expected = n / n_half
    ratio = full / half if half > 0 and full > 0 else float("nan")
    figures = {"full": full, "half": half, "ratio": ratio, "batch": float(n)}
    text = f"loss {full:.4g} on {n} samples vs {half:.4g} on {n_half} (ratio {ratio:.2f})"
    if math.isfinite(ratio) and abs(ratio - expected) <= SUM_RATIO_TOLERANCE * expected:
        return Verdict(code, "warning",
                       f"{text}: the loss grows with the batch size, so it is summed over samples, not averaged",
                       figures)
    return Verdict(code, None, text, figures)


def _first_part(batch: Any, n: int, k: int) -> Any:
    return apply_to_tensors(batch, lambda t: t[:k] if t.dim() > 0 and t.shape[0] == n else t)


class InitialLossCheck(PreflightCheck):
    """Pre-flight checks ``init-loss`` and ``loss-reduction`` (tips R2.4, R2.5, T9, T13, P13).

    Runs the user's ``training_step`` on a copy of the untrained model (dropout off) and compares the
    loss with what a well-initialised output gives: ``log C`` or the prior's entropy for cross-entropy
    / NLL / BCE (flagged when farther than ``max(0.5, 0.25 x expected)`` from both), the target
    variance for MSE (flagged above ``2 x``). Then the loss on the first half of the batch: a
    full/half ratio of ~2 (within 25%), or a loss called with ``reduction="sum"``, is a summed loss.

    Args:
        budget_s: the pre-flight time budget when this check runs alone.

    Example:
        >>> z, y = torch.randn(64, 10) * 0.01, torch.arange(64) % 10
        >>> call = LossCall("cross_entropy", z, y, "mean", torch.nn.functional.cross_entropy(z, y))
        >>> init_loss_verdict(call).severity is None
        True
        >>> InitialLossCheck().codes
        ('init-loss', 'loss-reduction')
    """

    title: ClassVar[str] = "initial loss"
    code: ClassVar[str] = "init-loss"
    codes: ClassVar[tuple[str, ...]] = ("init-loss", "loss-reduction")

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        return settle(self, trainer, lambda: self._measure(pl_module, batch))

    def _measure(self, pl_module: pl.LightningModule, batch: Any) -> tuple[list[Verdict], str]:
        copy, trace = traced_copy(pl_module, batch, dropout=False)
        verdicts: list[Verdict] = []
        details: list[str] = []
        known = [c for c in trace.calls if expected_initial_loss(c) is not None]
        if known:
            verdicts.append(init_loss_verdict(known[0]))
            details.append(verdicts[-1].message.split(":")[0])
        else:
            names = ", ".join(sorted({c.name for c in trace.calls})) or "no torch loss function"
            verdicts.append(Verdict("init-loss", "info", f"initial loss: not judged, training_step used {names}; "
                                    "init-loss knows cross-entropy, nll_loss, BCE and mse_loss", skipped=True))
            details.append(f"loss {float(trace.loss):.4g}, expected value unknown ({names})")
        summed = [c for c in trace.calls if c.reduction == "sum"]
        n = batch_size(batch) or 0
        if summed:
            verdicts.append(Verdict("loss-reduction", "warning",
                                    f"{summed[0].name} is called with reduction='sum' on a batch of {n}: the loss "
                                    "grows with the batch size", {"batch": float(n)}))
            details.append(f"{summed[0].name}(reduction='sum')")
        elif n >= 8:
            try:
                with torch.no_grad():
                    half = step_loss(copy, _first_part(batch, n, n // 2))
            except Exception as err:  # e.g. a model that needs its batch size
                details.append(f"half-batch loss not measured ({type(err).__name__})")
            else:
                if isinstance(half, torch.Tensor):
                    v = reduction_verdict(float(trace.loss), float(half), n, n // 2)
                    verdicts.append(v)
                    details.append(f"full/half batch {v.figures['ratio']:.2f}")
        return verdicts, "; ".join(details)

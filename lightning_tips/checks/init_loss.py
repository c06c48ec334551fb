"""Pre-flight: the loss at init, and whether it is averaged over the batch (tips R2.4, R2.5, T9, T13, P13).

A well-initialised classifier predicts (about) uniform probabilities, so its first cross-entropy is
``log C`` for ``C`` classes; with the output bias set to the log prior (R2.5, ``OutputBiasInit``)
it is the prior's entropy ``H(p)``. A regression output that starts at the target mean gives an MSE
equal to the target variance. The check runs the user's own ``training_step`` once on a copy, reads
the loss function it called and what was fed to it (see
:func:`~lightning_tips.checks.output_activation.trace_training_step`), and compares:

- ``init-loss`` (warning): cross-entropy / NLL / BCE *above* every expectation by more than
  ``max(0.5, 0.25 x expected)``: ``log C`` (``log 2`` per BCE output), ``H(prior)`` of the batch's
  labels (only from ``>= 5 x C`` labels), and the loss of the output bias alone (a bias that already
  holds the prior, e.g. set by ``OutputBiasInit``: the fix is then not advised again); MSE above
  ``2 x`` the target variance (``>= 8`` samples). *Below* every expectation is an ``info``: a trained
  or loaded model (a second ``fit``, fine-tuning), or labels leaking into the inputs. A non-finite
  loss is skipped (non-finite inputs or weights are the root cause).
- ``loss-reduction`` (warning): the loss function was called with ``reduction="sum"``. A traced
  ``reduction="mean"`` loss returned unchanged settles it (no heuristic). Otherwise the loss on the
  batch is compared with the losses on its two halves: ``full ~ first + second`` (within 10%, and
  more than 30% away from their mean) is a sum over samples (the effective learning rate then
  scales with the batch size, T13). The initial-loss comparison uses the per-sample loss.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lightning_tips._utils import apply_to_tensors, batch_size, find_output_layer, step_loss
from lightning_tips.checks._preflight import CardLine, CheckSkipped, PreflightCheck, Verdict, settle
from lightning_tips.checks.output_activation import LossCall, traced_copy

__all__ = ["InitialLossCheck", "expected_initial_loss", "init_loss_verdict", "reduction_verdict"]

CLASS_LOSSES = ("cross_entropy", "nll_loss")
BINARY_LOSSES = ("binary_cross_entropy", "binary_cross_entropy_with_logits")
SUM_FIT_TOLERANCE = 0.1  # a sum: full / (first half + second half) within 10% of 1
MEAN_MISS_MARGIN = 0.3  # ... and a mean, full / ((first + second) / 2), off by more than 30%
MIN_SAMPLES = 8  # fewer samples cannot estimate a target variance
PRIOR_SAMPLES_PER_CLASS = 5  # the batch prior is used only from >= 5 x C labels


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _binary_entropy(p: torch.Tensor) -> float:
    p = p.clamp(1e-7, 1 - 1e-7)
    return float((-(p * p.log()) - (1 - p) * (1 - p).log()).mean())


def expected_initial_loss(call: LossCall) -> dict[str, float] | None:
    """What a well-initialised output gives for this loss call, or ``None`` for a loss it does not know.

    Cross-entropy / NLL: ``uniform = log C`` and ``prior`` = entropy of the batch's class frequencies
    (``classes = C``, ``labels`` = how many labels the prior was counted from). BCE (with or without logits): ``uniform = log 2`` and ``prior`` = mean binary
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
            flat_p = t.float().movedim(1, -1).reshape(-1, c)
            p, labels = flat_p.mean(0), flat_p.shape[0]
        else:
            valid = t[(t >= 0) & (t < c)].long()
            if valid.numel() == 0:
                return None
            p, labels = torch.bincount(valid.flatten(), minlength=c).float() / valid.numel(), valid.numel()
        return {"uniform": math.log(c), "prior": _entropy(p), "classes": float(c), "labels": float(labels)}
    if call.name in BINARY_LOSSES:
        tf = t.float()
        p = tf.reshape(tf.shape[0], -1).mean(0) if tf.dim() >= 2 else tf.mean().reshape(1)
        return {"uniform": math.log(2), "prior": _binary_entropy(p), "classes": 2.0,
                "labels": float(tf.shape[0]) if tf.dim() else 1.0}
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


def _per_sample_losses(call: LossCall) -> torch.Tensor | None:
    """The loss of each sample (averaged over its elements) for the known classification losses, or ``None``."""
    z, t = call.input.detach().float(), call.target
    if t is None or z.numel() == 0 or z.dim() == 0:
        return None
    try:
        if call.name == "cross_entropy":
            per = F.cross_entropy(z, t if t.is_floating_point() else t.long(), reduction="none")
        elif call.name == "nll_loss":
            per = F.nll_loss(z, t.long(), reduction="none")
        elif call.name == "binary_cross_entropy_with_logits":
            per = F.binary_cross_entropy_with_logits(z, t.float().reshape(z.shape), reduction="none")
        elif call.name == "binary_cross_entropy":
            per = F.binary_cross_entropy(z.clamp(1e-7, 1 - 1e-7), t.float().reshape(z.shape), reduction="none")
        else:
            return None
    except Exception:  # shapes the loss accepted via broadcasting rules we do not mirror
        return None
    return per.reshape(per.shape[0], -1).mean(1) if per.dim() > 0 else None


def bias_only_loss(call: LossCall, bias: torch.Tensor | None) -> float | None:
    """The loss an output equal to ``bias`` alone (zero weights) gives on this call's targets — the prior's
    cross-entropy when the bias was set to the log prior (R2.5, ``OutputBiasInit``); ``None`` when the bias
    does not match the loss input's width.

    Example:
        >>> y = torch.tensor([1] * 9 + [0])
        >>> call = LossCall("cross_entropy", torch.zeros(10, 2), y, "mean", torch.tensor(0.69))
        >>> round(bias_only_loss(call, torch.log(torch.tensor([0.1, 0.9]))), 3)
        0.325
    """
    if bias is None or call.target is None:
        return None
    z = call.input
    b = bias.detach().to(z.device, torch.float32).flatten()
    if call.name in CLASS_LOSSES and z.dim() >= 2 and z.shape[1] == b.numel():
        shape = [1] * z.dim()
        shape[1] = b.numel()
        zb = b.reshape(shape).expand(z.shape)
        if call.name == "nll_loss":
            zb = zb.log_softmax(1)
    elif call.name == "binary_cross_entropy_with_logits" and (b.numel() == 1 or (z.dim() >= 1 and z.shape[-1] == b.numel())):
        zb = b.expand(z.shape) if b.numel() > 1 else b.reshape(()).expand(z.shape)
    else:
        return None
    per = _per_sample_losses(LossCall(call.name, zb, call.target, "mean", call.value))
    return float(per.mean()) if per is not None and per.numel() else None


def init_loss_verdict(call: LossCall, bias: torch.Tensor | None = None) -> Verdict:
    """The ``init-loss`` verdict for the first loss call of ``training_step`` on the untrained model.

    The measured loss must be near one of: ``log C`` (uniform predictions), the prior's entropy (only
    from a batch of at least ``5 x C`` labels: fewer cannot estimate a prior), or the loss of the output
    ``bias`` alone (a bias set to the log prior, e.g. by ``OutputBiasInit``). Near means within
    ``max(0.5, 0.25 x expected, 3 x standard error)``, the standard error from the per-sample losses.
    Above all of them is a warning (confidently wrong); below is an ``info`` (already better than chance:
    a trained or loaded model, or labels leaking). A non-finite loss is skipped (non-finite inputs or
    weights are the root cause, reported by their own checks).

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
        finite_in = bool(torch.isfinite(call.input).all())
        cause = ("the model's output is already non-finite: non-finite inputs or weights (see the nonfinite-* "
                 "findings, the root cause)" if not finite_in else
                 f"{call.name} turned finite outputs into {measured}: check the targets (NaN, out of range)")
        raise CheckSkipped(f"the initial loss is {measured}; {cause}")
    per = " per element" if call.reduction == "sum" else ""
    n = int(call.input.shape[0]) if call.input.dim() else 1
    if "variance" in expected:
        var, mean = expected["variance"], expected["target_mean"]
        figures = {"measured": measured, "variance": var, "target_mean": mean, "samples": float(n)}
        text = f"initial loss {measured:.3g}{per} vs target variance {var:.3g} ({call.name}, target mean {mean:.3g})"
        if var <= 1e-12:
            raise CheckSkipped(f"the targets of {call.name} are constant in this batch")
        if n < MIN_SAMPLES:
            raise CheckSkipped(f"{n} samples cannot estimate the target variance (needs {MIN_SAMPLES})")
        if measured > 2 * var:
            advice = ("standardise the regression targets (zero mean, unit variance) or set the output bias to the "
                      "target mean (R2.5, `OutputBiasInit`); initialise the output layer small (T9)")
            return Verdict(code, "warning", f"{text}: more than 2x the variance", figures, advice=advice)
        return Verdict(code, None, text, figures)
    uniform, prior, c = expected["uniform"], expected["prior"], int(expected["classes"])
    labels = expected.get("labels", float(n))
    prior_ok = labels >= PRIOR_SAMPLES_PER_CLASS * c
    from_bias = bias_only_loss(call, bias)
    losses = _per_sample_losses(call)
    se = float(losses.std() / math.sqrt(losses.numel())) if losses is not None and losses.numel() > 1 else 0.0
    figures = {"measured": measured, "expected": uniform, "classes": float(c), "standard_error": se,
               "samples": float(n)}
    name = f"log({c})" if call.name in CLASS_LOSSES else "log(2)"
    text = f"initial loss {measured:.3g}{per} vs {name}={uniform:.3g} ({call.name})"
    candidates = [uniform]
    if prior_ok:
        figures["prior_entropy"] = prior
        candidates.append(prior)
        if prior < 0.9 * uniform:
            text += f", prior entropy {prior:.3g}"
    bias_prior = from_bias is not None and from_bias < 0.9 * uniform  # the bias already encodes a prior
    if from_bias is not None and from_bias <= uniform + max(0.5, 0.25 * uniform):
        figures["bias_only"] = from_bias
        candidates.append(from_bias)
        if bias_prior:
            text += f", {from_bias:.3g} from the output bias alone (a prior bias)"
    if any(abs(measured - e) <= max(0.5, 0.25 * e) for e in candidates):
        return Verdict(code, None, text, figures)
    if measured < min(candidates):
        return Verdict(code, "info", f"{text}: the model is already better than chance before training — trained or "
                       "loaded weights (fine-tuning: expected), or labels leaking into the inputs", figures,
                       advice="if the model is freshly initialised, check that no input carries the label")
    best_constant = prior if prior_ok else uniform
    bias_fine = from_bias is not None and from_bias <= best_constant + max(0.1, 0.05 * best_constant)
    imbalanced = prior_ok and prior < 0.9 * uniform
    advice = "initialise the output layer's weights small (T9)"
    if bias_fine:  # e.g. OutputBiasInit ran: never advise the fix that is already there
        advice += (f"; the output bias is already right (the bias alone gives {from_bias:.3g}, the best constant "
                   "prediction's loss): only the weights make the logits large")
    elif imbalanced:
        advice += (f" and its bias to the log prior so the loss starts at the prior entropy {prior:.3g} "
                   "(R2.5, `OutputBiasInit`)")
    else:
        advice += " and its bias to the prior (R2.5, `OutputBiasInit`)"
    return Verdict(code, "warning", f"{text}: the untrained model is confidently wrong: too-large initial logits (T9)",
                   figures, advice=advice)


def reduction_verdict(full: float, first: float, second: float, n: int, n_first: int) -> Verdict:
    """The ``loss-reduction`` verdict when no loss function's reduction was traced: the ``training_step``
    loss on ``n`` samples against the losses on its two halves. A mean gives ``full ~ (first + second) / 2``,
    a sum ``full ~ first + second`` — exact up to batch-statistics layers, so the decision needs the sum
    to fit within 10% and the mean to miss by more than 30%.

    Example:
        >>> reduction_verdict(147.4, 73.9, 73.5, 64, 32).severity, reduction_verdict(2.31, 2.29, 2.33, 64, 32).severity
        ('warning', None)
    """
    code = "loss-reduction"
    both = first + second
    ratio = full / first if first > 0 and full > 0 else float("nan")
    fit = full / both if both > 0 and full > 0 else float("nan")
    figures = {"full": full, "half": first, "second_half": second, "ratio": ratio, "full_over_halves": fit,
               "batch": float(n)}
    text = (f"loss {full:.4g} on {n} samples vs {first:.4g} + {second:.4g} on its halves "
            f"(full / sum of halves {fit:.2f})")
    if math.isfinite(fit) and abs(fit - 1) <= SUM_FIT_TOLERANCE and abs(2 * fit - 1) > MEAN_MISS_MARGIN:
        return Verdict(code, "warning",
                       f"{text}: the loss grows with the batch size, so it is summed over samples, not averaged",
                       figures)
    return Verdict(code, None, text, figures)


def _part(batch: Any, n: int, a: int, b: int) -> Any:
    return apply_to_tensors(batch, lambda t: t[a:b] if t.dim() > 0 and t.shape[0] == n else t)


class InitialLossCheck(PreflightCheck):
    """Pre-flight checks ``init-loss`` and ``loss-reduction`` (tips R2.4, R2.5, T9, T13, P13).

    Runs the user's ``training_step`` on a copy of the untrained model (dropout off) and compares the
    loss with what a well-initialised output gives: ``log C`` or the prior's entropy for cross-entropy
    / NLL / BCE (flagged when farther than ``max(0.5, 0.25 x expected)`` from both), the target
    variance for MSE (flagged above ``2 x``). Then the loss on the first half of the batch: a
    full/half ratio of ~2 (within 25%), or a loss called with ``reduction="sum"``, is a summed loss.

    Args:
        budget_s: the safety net, in seconds, when this check runs alone (the work is planned in steps and samples).

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
            layer = find_output_layer(copy)
            bias = getattr(layer[1], "bias", None) if layer is not None else None
            try:
                verdicts.append(init_loss_verdict(known[0], bias if isinstance(bias, torch.Tensor) else None))
                details.append(verdicts[-1].message.split(":")[0])
            except CheckSkipped as err:
                verdicts.append(Verdict("init-loss", "info", f"initial loss: skipped, {err}", skipped=True))
                details.append(str(err))
        else:
            names = ", ".join(sorted({c.name for c in trace.calls})) or "no torch loss function"
            verdicts.append(Verdict("init-loss", "info", f"initial loss: not judged, training_step used {names}; "
                                    "init-loss knows cross-entropy, nll_loss, BCE and mse_loss", skipped=True))
            details.append(f"loss {float(trace.loss):.4g}, expected value unknown ({names})")
        summed = [c for c in trace.calls if c.reduction == "sum"]
        n = batch_size(batch) or 0
        loss = float(trace.loss)
        # the loss returned is a traced loss call's mean, unchanged: the reduction is known, no heuristic
        mean_returned = any(c.reduction == "mean" and c.value.numel() == 1
                            and abs(float(c.value) - loss) <= 1e-6 * max(abs(loss), 1e-12) for c in trace.calls)
        if summed:
            verdicts.append(Verdict("loss-reduction", "warning",
                                    f"{summed[0].name} is called with reduction='sum' on a batch of {n}: the loss "
                                    "grows with the batch size", {"batch": float(n)}))
            details.append(f"{summed[0].name}(reduction='sum')")
        elif mean_returned:
            details.append(f"{next(c.name for c in trace.calls if c.reduction == 'mean')}(reduction='mean') traced")
        elif n >= 8 and math.isfinite(loss):
            k = n // 2
            try:
                with torch.no_grad():
                    first = step_loss(copy, _part(batch, n, 0, k))
                    second = step_loss(copy, _part(batch, n, k, 2 * k))
                    whole = trace.loss if n == 2 * k else step_loss(copy, _part(batch, n, 0, 2 * k))
            except Exception as err:  # e.g. a model that needs its batch size
                details.append(f"half-batch loss not measured ({type(err).__name__})")
            else:
                if all(isinstance(t, torch.Tensor) for t in (first, second, whole)):
                    v = reduction_verdict(float(whole), float(first), float(second), 2 * k, k)
                    verdicts.append(v)
                    details.append(f"full / sum of halves {v.figures['full_over_halves']:.2f}")
        return verdicts, "; ".join(details)

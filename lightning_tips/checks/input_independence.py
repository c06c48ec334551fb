"""Pre-flight: the input-independent baseline — with zeroed inputs the model must do worse (tip R2.7).

Two failures look alike from the loss curve: a forward that ignores its input (a wrong variable,
a branch that is never taken) and labels that do not belong to their inputs (shuffled apart). The
check, on copies of the model with fresh optimizers of the user's type and learning rate (dropout
off):

1. forwards the batch with real and with zeroed float inputs: identical outputs mean the forward
   ignores its input → ``input-independent`` (warning) at once;
2. otherwise trains one copy on half of the batch with real inputs and one with zeroed inputs for
   the same ``steps``, then evaluates both on the *other* half (held out, so memorising random
   labels gives no advantage): flagged when ``real >= 0.9 x zeroed`` there. Class labels are split
   stratified, so both halves share the prior (else the zeroed copy is penalised for a prior
   mismatch between the halves).

The comparison is only judged when the real-input copy fitted its training half better than the
zeroed copy (``real < 0.9 x zeroed`` on it); otherwise — learning rate too low for ``steps``, no
parameter moving (see ``not-learning``) — it is an ``info`` that the baseline was inconclusive.
Batches under 8 samples are trained and evaluated on the same samples (catches 1., not shuffled
labels). Integer inputs (token ids) cannot be zeroed meaningfully: ``info``.

Measured on the digits CNN (Adam, lr 1e-3, 32 + 32 samples, stratified, 30 batches/seeds, 50
steps): held-out ratio 0.41-0.66 when healthy, 0.98-1.37 with shuffled labels. At 30 steps the
healthy ratio sat at 0.88-0.90 (unstratified), hence ``steps=50`` by default (~0.3 s).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch

from lightning_tips._utils import (
    apply_to_tensors,
    batch_size,
    join_batch,
    model_copy,
    named_tensors,
    split_batch,
    step_loss,
)
from lightning_tips._validate import check_int
from lightning_tips.checks._preflight import CardLine, CheckSkipped, PreflightCheck, Verdict, settle
from lightning_tips.checks.output_activation import eval_dropout, trace_training_step
from lightning_tips.checks.overfit_batch import OptimizerFactory, fit_batch, optimizer_factory

__all__ = ["InputIndependenceCheck", "halves", "input_independence", "input_independence_verdict"]

INDEPENDENCE_RATIO = 0.9


def _take(batch: Any, n: int, idx: torch.Tensor) -> Any:
    return apply_to_tensors(batch, lambda t: t[idx.to(t.device)] if t.dim() > 0 and t.shape[0] == n else t)


def halves(targets: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint halves of ``n`` samples: stratified by class for 1-d integer targets (so both halves
    share the class prior and the zeroed baseline is not penalised for a prior mismatch), else
    alternating samples.

    Example:
        >>> a, b = halves(torch.tensor([0, 0, 1, 1, 1, 1, 2, 2]), 8)
        >>> a.tolist(), b.tolist()
        ([0, 2, 4, 6], [1, 3, 5, 7])
    """
    if targets.dim() == 1 and targets.shape[0] == n and not targets.is_floating_point():
        order = torch.argsort(targets.detach().cpu(), stable=True)
    else:
        order = torch.arange(n)
    return order[0::2], order[1::2]


def input_independence(
    module: pl.LightningModule,
    batch: Any,
    make_optimizer: OptimizerFactory,
    steps: int = 50,
    deadline: float | None = None,
) -> dict[str, float]:
    """Figures of the input-independent baseline (see the module docstring).

    Returns ``{"ignores_input", "output_change"}`` and, when the forward does use its input,
    ``{"real_train", "zero_train", "real_heldout", "zero_heldout", "steps", "changed", "heldout"}``.

    Raises:
        CheckSkipped: unlabeled batch layout, or no floating-point input to zero.
    """
    split = split_batch(batch)
    if split is None:
        raise CheckSkipped("the batch is not (inputs, targets) or a dict with input and target keys")
    inputs, targets = split
    if not any(t.is_floating_point() for _, t in named_tensors(inputs)):
        raise CheckSkipped("the inputs are not floating point (token ids?), zeroing them is not meaningful")
    zeroed = join_batch(batch, apply_to_tensors(inputs, lambda t: torch.zeros_like(t) if t.is_floating_point() else t),
                        targets)
    fig: dict[str, float] = {"ignores_input": 0.0, "output_change": float("nan")}

    # 1. does the output change at all when the input is zeroed?
    probe = eval_dropout(model_copy(module))
    with torch.no_grad():
        out_real = trace_training_step(probe, batch).output
        out_zero = trace_training_step(probe, zeroed).output
    if out_real is not None and out_zero is not None and out_real.shape == out_zero.shape:
        change, scale = torch.stack([(out_real.float() - out_zero.float()).abs().max(),
                                     out_real.float().abs().max()]).tolist()
        fig["output_change"] = change
        if change <= 1e-6 * max(scale, 1e-12):
            fig["ignores_input"] = 1.0
            return fig

    # 2. train on half A, evaluate on half B, real vs zeroed inputs
    n = batch_size(batch) or 0
    heldout = n >= 8
    a, b = halves(targets, n) if heldout else (torch.arange(n), torch.arange(n))
    fig["heldout"] = float(heldout)
    results = []
    budget_steps = steps
    for k, data in enumerate((batch, zeroed)):
        torch.manual_seed(0)  # same dropout/noise draws for both copies (the caller restores the RNG)
        copy = eval_dropout(model_copy(module))
        assert isinstance(copy, pl.LightningModule)
        opt = make_optimizer(copy)
        stop = None
        if deadline is not None and k == 0:
            now = time.perf_counter()
            stop = now + max(deadline - now, 0.0) / 2
        trained = fit_batch(copy, _take(data, n, a), opt, budget_steps, stop)
        budget_steps = max(int(trained["steps"]), 1)
        with torch.no_grad():
            held = step_loss(copy, _take(data, n, b))
        assert isinstance(held, torch.Tensor)
        results.append((trained, float(held)))
    (real, real_b), (zero, zero_b) = results
    fig.update({"real_train": real["end"], "zero_train": zero["end"], "real_heldout": real_b,
                "zero_heldout": zero_b, "steps": real["steps"], "requested_steps": float(steps),
                "changed": real["changed"]})
    return fig


def input_independence_verdict(fig: dict[str, float], ratio: float = INDEPENDENCE_RATIO) -> Verdict:
    """``input-independent`` warning from :func:`input_independence`'s figures.

    Example:
        >>> input_independence_verdict({"ignores_input": 0.0, "output_change": 1.0, "real_train": 0.4,
        ...     "zero_train": 2.1, "real_heldout": 2.5, "zero_heldout": 2.3, "steps": 50, "changed": 1,
        ...     "heldout": 1}).severity
        'warning'
    """
    code = "input-independent"
    if fig["ignores_input"]:
        return Verdict(code, "warning", "the model's output is identical with zeroed inputs (max change "
                       f"{fig['output_change']:.3g}): the forward ignores its input", fig)
    if not fig["changed"]:
        raise CheckSkipped("training the copy changed no parameter (learning rate 0, frozen parameters or a "
                           "detached output: see not-learning), so the baseline cannot be judged")
    steps = int(fig["steps"])
    requested = int(fig.get("requested_steps", steps))
    if steps < requested:
        raise CheckSkipped(f"only {steps} of {requested} training steps fit in the pre-flight budget, too few to "
                           "judge the baseline (raise `budget_s`)")
    fitted = f"train loss real {fig['real_train']:.3g} vs zeroed {fig['zero_train']:.3g} after {steps} steps"
    if not fig["real_train"] < ratio * fig["zero_train"]:
        raise CheckSkipped(f"inconclusive: {fitted}, the real-input copy did not fit its samples better than the "
                           "zeroed one (raise `steps`, or see not-learning)")
    where = "held-out" if fig["heldout"] else "same-batch"
    text = f"{where} loss real {fig['real_heldout']:.3g} vs zeroed {fig['zero_heldout']:.3g} ({fitted})"
    if fig["real_heldout"] >= ratio * fig["zero_heldout"]:
        return Verdict(code, "warning", f"{text}: real inputs give no advantage on samples not trained on, so the "
                       "labels do not follow from the inputs (shuffled apart?) or the forward barely uses them", fig)
    return Verdict(code, None, text, fig)


class InputIndependenceCheck(PreflightCheck):
    """Pre-flight check ``input-independent`` (tip R2.7): on copies with fresh optimizers of the user's
    type and learning rate, the model trained on real inputs must beat the model trained on zeroed
    inputs on held-out samples (flagged when ``real >= 0.9 x zeroed``); an output unchanged by
    zeroing the input is flagged at once. Inconclusive runs are ``info``.

    Args:
        steps: optimizer steps for each of the two copies.
        budget_s: the pre-flight time budget when this check runs alone.

    Example:
        >>> InputIndependenceCheck(steps=50).code
        'input-independent'
    """

    title: ClassVar[str] = "input-independent baseline"
    code: ClassVar[str] = "input-independent"

    def __init__(self, steps: int = 50, budget_s: float = 3.0) -> None:
        super().__init__(budget_s=budget_s)
        check_int("steps", steps, low=1)
        self.steps = steps

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        def measure() -> tuple[list[Verdict], str]:
            fig = input_independence(pl_module, batch, optimizer_factory(trainer, pl_module), self.steps,
                                     self._deadline)
            v = input_independence_verdict(fig)
            if fig["ignores_input"]:
                return [v], "output unchanged by zeroed inputs"
            return [v], f"held-out loss real {fig['real_heldout']:.3g} vs zeroed {fig['zero_heldout']:.3g}"

        return settle(self, trainer, measure)

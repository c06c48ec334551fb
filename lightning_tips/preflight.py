"""``Preflight``: every pre-flight check on one batch, within one time budget, one report card.

Before the first real step (``on_train_start``), on copies of the model and inside
``preserved_rng``, so training stays bit-for-bit what it would have been:

========================  ==========================================  ===================
check                     finding codes                               tips
========================  ==========================================  ===================
missing bias              missing-bias                                P4
data (``DataChecks``)     nonfinite-input, duplicate-data,            R1 R2.1 T6 T12
                          class-imbalance, unnormalized-input,        T16 P6
                          unshuffled-data, no-seed
first batch (view)        view-skipped                                R2.10
initial loss              init-loss, loss-reduction                   R2.4 R2.5 T9 T13 P13
output activation         output-activation                           P3 P13
batch independence        batch-mixing                                R2.12 P12
input-independent         input-independent                           R2.7
overfit one batch         not-learning                                R2.8 P9 T10
========================  ==========================================  ===================

The cheap static checks run first, the ones that train copies last. How much work each check does
(steps, samples) is planned from the model's size (:class:`~lightning_tips.checks._preflight.WorkPlan`),
never from the clock, so the card is the same on a fast and on a loaded machine; ``budget_s`` is a
safety net only. It does not run again when the fit resumes from a checkpoint.

With the data checks, ``Preflight`` also composes the first-batch view
(:class:`~lightning_tips.views.first_batch.FirstBatchView`, R2.10): the first batch as it enters the
net, drawn from the batch the training loop hands over at step 0, outside the budget. A composite may
hold views; the checks themselves never import one.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_tips._callback import TipComposite
from lightning_tips._validate import check_bool, check_float, check_str
from lightning_tips.checks._preflight import (
    DEFAULT_BUDGET_S,
    CardLine,
    PreflightCheck,
    WorkPlan,
    _OncePerFit,
    first_train_batch,
    run_preflight,
)
from lightning_tips.checks.batch_mixing import BatchMixingCheck
from lightning_tips.checks.init_loss import InitialLossCheck
from lightning_tips.checks.input_independence import InputIndependenceCheck
from lightning_tips.checks.missing_bias import MissingBiasCheck
from lightning_tips.checks.output_activation import OutputActivationCheck
from lightning_tips.checks.overfit_batch import OverfitBatchCheck
from lightning_tips.views.first_batch import FirstBatchView

__all__ = ["Preflight"]


def _data_checks(input_key: str | None, target_key: str | None) -> PreflightCheck | None:
    try:
        from lightning_tips.checks.data import DataChecks
    except ImportError:  # pragma: no cover - the data checks ship with the package
        return None
    return DataChecks(input_key=input_key, target_key=target_key)


class Preflight(_OncePerFit, TipComposite):
    """The pre-flight checks as one callback: one batch, one work plan, one report card (tips R2.4-R2.12,
    P3, P4, P9, P12, P13, T10, T13).

    In ``on_train_start`` (not when resuming from a checkpoint) it fetches the first training batch,
    plans the work from the model's size (steps and samples for the checks that train copies: fewer
    samples, then fewer steps for large models — never decided by the clock), runs each enabled check
    on it — missing bias, data checks, initial loss, output activation, batch independence,
    input-independent baseline, overfit one batch — and prints one card on rank zero. ``budget_s`` is a
    safety net: a check starts only while it is not spent; when it is hit one ``info`` says so. Every
    check works on copies; the user's model, optimizer, scheduler and RNG streams are untouched. Its
    ``findings`` are its checks' findings.

    Args:
        init_loss: ``init-loss`` and ``loss-reduction`` (:class:`InitialLossCheck`).
        output_activation: ``output-activation`` (:class:`OutputActivationCheck`).
        batch_mixing: ``batch-mixing`` (:class:`BatchMixingCheck`).
        input_independence: ``input-independent`` (:class:`InputIndependenceCheck`).
        overfit_batch: ``not-learning`` on one batch (:class:`OverfitBatchCheck`).
        data: the data checks (``DataChecks``) and the first batch as it enters the net
            (:class:`~lightning_tips.views.first_batch.FirstBatchView`).
        missing_bias: ``missing-bias`` (:class:`~lightning_tips.checks.missing_bias.MissingBiasCheck`, P4).
        budget_s: the safety net, in seconds for all checks together (the planned work takes far less).
        input_key: the dict batch's input key for the data checks when it is not recognised (see
            :class:`~lightning_tips.checks.data.DataChecks`).
        target_key: the dict batch's target key for the data checks.

    Example:
        >>> pre = Preflight(data=False, overfit_batch=False)
        >>> [c.title for c in pre.checks]
        ['missing bias', 'initial loss', 'output activation', 'batch independence', 'input-independent baseline']
    """

    def __init__(
        self,
        init_loss: bool = True,
        output_activation: bool = True,
        batch_mixing: bool = True,
        input_independence: bool = True,
        overfit_batch: bool = True,
        data: bool = True,
        missing_bias: bool = True,
        budget_s: float = DEFAULT_BUDGET_S,
        input_key: str | None = None,
        target_key: str | None = None,
    ) -> None:
        flags = {"init_loss": init_loss, "output_activation": output_activation, "batch_mixing": batch_mixing,
                 "input_independence": input_independence, "overfit_batch": overfit_batch, "data": data,
                 "missing_bias": missing_bias}
        for name, v in flags.items():
            check_bool(name, v)
        check_float("budget_s", budget_s, low=0.0, low_open=True)
        check_str("input_key", input_key, optional=True)
        check_str("target_key", target_key, optional=True)
        checks: list[PreflightCheck] = []
        if missing_bias:  # static: reads the module tree only
            checks.append(MissingBiasCheck())
        if data and (dc := _data_checks(input_key, target_key)) is not None:
            checks.append(dc)
        for enabled, cls in (
            (init_loss, InitialLossCheck), (output_activation, OutputActivationCheck),
            (batch_mixing, BatchMixingCheck), (input_independence, InputIndependenceCheck),
            (overfit_batch, OverfitBatchCheck),
        ):  # fmt: skip
            if enabled:
                checks.append(cls())
        for c in checks:
            c._composed = True
        children: list[Callback] = list(checks)
        data_checks = next((c for c in checks if c.title == "data"), None)
        if data_checks is not None and getattr(data_checks, "first_batch", False):
            # the first batch as it enters the net (R2.10): a view, not a check. Last, so the checks keep
            # their positions (a checkpoint's child keys) and the data checks' step-0 scan of a stream
            # still comes before the picture, as when the data checks drew it themselves.
            children.append(FirstBatchView(input_key=input_key, target_key=target_key))
        super().__init__(children)
        self.budget_s = float(budget_s)
        self.budget_arg = "budget_s"  # the argument the time-limit line names (``Recipe`` sets its own)
        self.card: list[CardLine] = []
        self.plan: WorkPlan | None = None  # the last card's work plan

    @property
    def checks(self) -> list[PreflightCheck]:
        """The pre-flight checks, in the order they run."""
        return [c for c in self.children if isinstance(c, PreflightCheck)]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(checks=[c.title for c in self.checks], budget_s=self.budget_s)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any | None = None) -> list[CardLine]:
        """Run the checks on ``batch`` (default: the first training batch) within the budget; the card lines."""
        if batch is None:
            batch = first_train_batch(trainer, pl_module)
        self.card = run_preflight(trainer, pl_module, self.checks, self.budget_s, batch, self.budget_arg)
        self.plan = self.checks[0]._plan if self.checks else None
        self._done = True
        return self.card

    def _run_card(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[CardLine]:
        return self.run(trainer, pl_module)

"""``Preflight``: every pre-flight check on one batch, within one time budget, one report card.

Before the first real step (``on_train_start``), on copies of the model and inside
``preserved_rng``, so training stays bit-for-bit what it would have been:

========================  ==========================================  ===================
check                     finding codes                               tips
========================  ==========================================  ===================
data (``DataChecks``)     nonfinite-input, duplicate-data,            R1 R2.1 R2.10 T6
                          class-imbalance, unnormalized-input,        T12 T16 P6
                          unshuffled-data, no-seed
initial loss              init-loss, loss-reduction                   R2.4 R2.5 T9 T13 P13
output activation         output-activation                           P3 P13
batch independence        batch-mixing                                R2.12 P12
input-independent         input-independent                           R2.7
overfit one batch         not-learning                                R2.8 P9 T10
missing bias              missing-bias                                P4
========================  ==========================================  ===================

It does not run again when the fit resumes from a checkpoint.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightning_tips._callback import TipComposite
from lightning_tips._validate import check_bool, check_float
from lightning_tips.checks._preflight import CardLine, PreflightCheck, _OncePerFit, first_train_batch, run_preflight
from lightning_tips.checks.batch_mixing import BatchMixingCheck
from lightning_tips.checks.init_loss import InitialLossCheck
from lightning_tips.checks.input_independence import InputIndependenceCheck
from lightning_tips.checks.missing_bias import MissingBiasCheck
from lightning_tips.checks.output_activation import OutputActivationCheck
from lightning_tips.checks.overfit_batch import OverfitBatchCheck

__all__ = ["Preflight"]


def _data_checks() -> PreflightCheck | None:
    try:
        from lightning_tips.checks.data import DataChecks
    except ImportError:  # pragma: no cover - the data checks ship with the package
        return None
    return DataChecks()


class Preflight(_OncePerFit, TipComposite):
    """The pre-flight checks as one callback: one batch, one budget, one report card (tips R2.4-R2.12,
    P3, P9, P12, P13, T10, T13).

    In ``on_train_start`` (not when resuming from a checkpoint) it fetches the first training batch,
    runs each enabled check on it — data checks, initial loss, output activation, batch independence,
    input-independent baseline, overfit one batch — until ``budget_s`` seconds are spent (checks that
    would start later are skipped with an ``info``), and prints one card on rank zero. Every check works
    on copies; the user's model, optimizer, scheduler and RNG streams are untouched. Its ``findings``
    are its checks' findings.

    Args:
        init_loss: ``init-loss`` and ``loss-reduction`` (:class:`InitialLossCheck`).
        output_activation: ``output-activation`` (:class:`OutputActivationCheck`).
        batch_mixing: ``batch-mixing`` (:class:`BatchMixingCheck`).
        input_independence: ``input-independent`` (:class:`InputIndependenceCheck`).
        overfit_batch: ``not-learning`` on one batch (:class:`OverfitBatchCheck`).
        data: the data checks (``DataChecks``).
        missing_bias: ``missing-bias`` (:class:`~lightning_tips.checks.missing_bias.MissingBiasCheck`, P4).
        budget_s: seconds for all checks together.

    Example:
        >>> pre = Preflight(data=False, overfit_batch=False)
        >>> [c.title for c in pre.checks]
        ['initial loss', 'output activation', 'batch independence', 'input-independent baseline', 'missing bias']
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
        budget_s: float = 3.0,
    ) -> None:
        flags = {"init_loss": init_loss, "output_activation": output_activation, "batch_mixing": batch_mixing,
                 "input_independence": input_independence, "overfit_batch": overfit_batch, "data": data,
                 "missing_bias": missing_bias}
        for name, v in flags.items():
            check_bool(name, v)
        check_float("budget_s", budget_s, low=0.0, low_open=True)
        checks: list[PreflightCheck] = []
        if data and (dc := _data_checks()) is not None:
            checks.append(dc)
        for enabled, cls in (
            (init_loss, InitialLossCheck), (output_activation, OutputActivationCheck),
            (batch_mixing, BatchMixingCheck), (input_independence, InputIndependenceCheck),
            (overfit_batch, OverfitBatchCheck), (missing_bias, MissingBiasCheck),
        ):  # fmt: skip
            if enabled:
                checks.append(cls())
        for c in checks:
            c._composed = True
        super().__init__(list(checks))
        self.budget_s = float(budget_s)
        self.card: list[CardLine] = []

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
        self.card = run_preflight(trainer, pl_module, self.checks, self.budget_s, batch)
        self._done = True
        return self.card

    def _run_card(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[CardLine]:
        return self.run(trainer, pl_module)

"""Early stopping with the recipe's defaults, best-weight restore, and the ``overfitting`` verdict (R4.9, T2, R4.7, R4.8).

Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping` stops when the monitored metric has not
improved for ``patience`` validation checks. This subclass keeps all of that (same arguments, same
checkpoint state, same ``state_key``) and adds what the recipe asks for:

- ``restore_best_weights``: a CPU copy of the module's ``state_dict`` is taken whenever the
  monitored metric improves, and loaded back into the module when training ends (stopped early or
  not) — the model ends with its best weights without needing a ``ModelCheckpoint``;
- the ``overfitting`` finding when the validation metric has been worse than its best for
  ``patience`` checks while the training loss kept falling
  (:func:`lightning_tips.checks._curves.overfitting_verdict`), with advice: dropout (R4.7), weight
  decay (R4.8), more data (R4.1);
- the findings channel of every lightning_tips callback (it *is* a
  :class:`~lightning_tips.TipCallback`: its findings appear in the end-of-fit summary).

Example:
    >>> import torch
    >>> es = EarlyStopping()  # monitor="val_loss", patience=3, restore_best_weights=True
    >>> es.monitor, es.patience, es.restore_best_weights
    ('val_loss', 3, True)
    >>> from lightning_tips import TipCallback
    >>> from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
    >>> isinstance(es, TipCallback) and isinstance(es, LightningEarlyStopping)
    True
    >>> best_weights_copy(torch.nn.Linear(2, 1))["weight"].device
    device(type='cpu')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from lightning_tips import _ddp
from lightning_tips._callback import TipCallback
from lightning_tips._utils import any_rank
from lightning_tips._validate import check_bool, check_choice, check_float, check_int, check_str
from lightning_tips.checks._curves import overfitting_verdict

__all__ = ["EarlyStopping", "best_weights_copy"]

_ADVICE = (
    "add dropout (R4.7) or weight decay (R4.8), get more or augmented data (R4.1-R4.3), or use a smaller "
    "model (R4.5); early stopping keeps the best weights meanwhile (R4.9)"
)


def _no_validation_loop(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
    """Why this fit has no validation loop, when that is known at ``setup``; else ``None``."""
    if not is_overridden("validation_step", pl_module):
        return f"{type(pl_module).__name__} defines no validation_step"
    limit = trainer.limit_val_batches
    if limit is not None and limit == 0:
        return "limit_val_batches=0"
    return None


_VAL_ACC_KEY = "val_acc"  # read when logged: a validation accuracy that did not fall speaks against overfitting


def _metric(logs: Mapping[str, Any], key: str) -> float | None:
    """``logs[key]`` (or the first validation loader's ``key/dataloader_idx_0``) as a float, if a finite scalar."""
    value = logs.get(key, logs.get(f"{key}/dataloader_idx_0"))
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        out = float(value.detach().float().reshape(()))
        return out if math.isfinite(out) else None
    return None


def _per_loader_key(monitor: str, logs: Mapping[str, Any]) -> str | None:
    """``monitor/dataloader_idx_N`` for the lowest N logged, when ``monitor`` itself is not (several val loaders)."""
    prefix = f"{monitor}/dataloader_idx_"
    indices = sorted(int(k[len(prefix) :]) for k in logs if k.startswith(prefix) and k[len(prefix) :].isdigit())
    return f"{prefix}{indices[0]}" if indices else None


def best_weights_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` (parameters and buffers)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class EarlyStopping(TipCallback, _LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` with the recipe's defaults, best-weight restore and the ``overfitting`` finding.

    All of Lightning's arguments keep their meaning; the defaults follow the recipe (R4.9): monitor
    ``"val_loss"``, ``patience=3``. Stopping is Lightning's own decision, taken identically on every
    rank (``reduce_boolean_decision``); a weight snapshot is taken on every rank when the metric
    improved on any rank, so all ranks restore the same weights. Log the monitored metric with
    ``sync_dist=True`` under DDP so every rank sees the same value.

    Findings:
        ``overfitting`` (``warning``): the monitored metric has been worse than its best for
        ``patience`` checks while the training loss — ``trainer.callback_metrics[train_loss_key]`` at
        the check, e.g. ``self.log("train_loss", loss, on_epoch=True)`` — fell below its value at the
        best check, by a rise beyond the metric's check-to-check noise and >= 10% of the best; below a
        25% rise a logged ``val_acc`` that did not fall makes it an ``info`` (the decision is
        :func:`~lightning_tips.checks._curves.overfitting_verdict`, shared with ``LearningCurves``).
        Figures: ``best_val``, ``val_now``, ``train_at_best``, ``train_now``, ``checks_since_best``,
        ``rise``, ``noise`` (and ``acc_at_best``/``acc_now``). If ``train_loss_key`` is never logged,
        one ``info`` ``overfitting`` finding says the verdict was skipped.

    A monitor that is not available: with several validation loaders (Lightning logs
    ``val_loss/dataloader_idx_N``) the first loader's key is monitored and one ``info`` says so.
    With no validation loop (no ``validation_step``, or ``limit_val_batches=0``) and a ``val*`` monitor,
    ``strict=True`` raises Lightning's ``RuntimeError`` at ``setup``, before the first step (not after
    an epoch); with ``strict=False`` — and always inside :class:`~lightning_tips.Recipe` — a skipped
    ``info`` says early stopping is off, and training goes on.

    Checkpoint state: Lightning's (``wait_count``, ``stopped_epoch``, ``best_score``, ``patience``,
    stopping reason) plus the findings, the per-check histories, and — only with
    ``restore_best_weights`` — the best weights (a CPU copy of the ``state_dict``: the checkpoint
    grows by one model's size). ``state_key`` distinguishes ``monitor`` and ``mode``, as Lightning's.

    Args:
        monitor: the metric to monitor.
        min_delta: minimum change that counts as an improvement.
        patience: validation checks with no improvement before stopping (also the overfitting window).
        verbose: log Lightning's improvement/stop messages.
        mode: ``"min"`` or ``"max"``.
        strict: raise when ``monitor`` is missing.
        check_finite: stop when the metric becomes NaN/inf.
        stopping_threshold: stop once the metric reaches this value.
        divergence_threshold: stop once the metric is worse than this value.
        check_on_train_epoch_end: run the check at the end of the training epoch (``None``: Lightning decides).
        log_rank_zero_only: log status on rank zero only.
        restore_best_weights: load the best weights back into the module when training ends.
        train_loss_key: the ``callback_metrics`` key of the training loss, for the ``overfitting`` verdict.

    Example:
        >>> es = EarlyStopping(monitor="val_acc", mode="max", patience=5)
        >>> es.state_key
        "EarlyStopping{'monitor': 'val_acc', 'mode': 'max'}"
        >>> "best_weights" in EarlyStopping(restore_best_weights=False).state_dict()
        False
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: Literal["min", "max"] = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        restore_best_weights: bool = True,
        train_loss_key: str = "train_loss",
    ) -> None:
        check_str("monitor", monitor)
        check_float("min_delta", min_delta, low=0.0)
        check_int("patience", patience, low=1)
        check_choice("mode", mode, ("min", "max"))
        for name, flag in (("verbose", verbose), ("strict", strict), ("check_finite", check_finite),
                           ("log_rank_zero_only", log_rank_zero_only), ("restore_best_weights", restore_best_weights)):
            check_bool(name, flag)
        check_float("stopping_threshold", stopping_threshold, optional=True)
        check_float("divergence_threshold", divergence_threshold, optional=True)
        check_bool("check_on_train_epoch_end", check_on_train_epoch_end, optional=True)
        check_str("train_loss_key", train_loss_key)
        TipCallback.__init__(self)  # the bases in turn: Lightning's __init__ ends at Callback's (the MRO)
        _LightningEarlyStopping.__init__(
            self,
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.restore_best_weights = restore_best_weights
        self.train_loss_key = train_loss_key
        self._reset_history()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        # set by Recipe: a monitor that is not available is an `info` (skipped), never Lightning's error
        self._skip_missing_monitor = False
        self._no_validation: str | None = None  # why this fit has no validation loop (known at setup)

    def _reset_history(self) -> None:
        self._val_history: list[float] = []  # the monitored metric per check, as reported
        self._train_history: list[float] = []  # the training loss at the same checks
        self._acc_history: list[float] = []  # `val_acc` at the same checks (NaN when not logged): counter-evidence
        self._missing_train_reported = False

    # --- lifecycle -------------------------------------------------------------------------------
    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (Lightning's EarlyStopping.setup ran first: TipCallback.setup calls the next base's)
        self._reset_history()
        self._no_validation = _no_validation_loop(trainer, pl_module)
        if self._no_validation is not None and self.monitor.startswith("val"):
            if self.strict and not self._skip_missing_monitor:
                # Lightning would say so after a whole epoch; it is known now
                raise RuntimeError(
                    f"Early stopping conditioned on metric `{self.monitor}` which is not available: this fit has "
                    f"no validation loop ({self._no_validation}). Add a validation loop, monitor a metric "
                    f"logged in training_step, or pass EarlyStopping(strict=False)."
                )
            self._report_missing(trainer, f"this fit has no validation loop ({self._no_validation})")

    def _report_missing(self, trainer: pl.Trainer, why: str) -> None:
        self.report(
            trainer,
            "overfitting",
            "info",
            f"early stopping and its overfitting verdict skipped: `{self.monitor}` is not available — {why}",
            module=self.monitor,  # its own line: LearningCurves may say "no validation loop" for its curves
            skipped=True,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the checks' collectives come at validation ends: uneven epochs across ranks stop here instead
        _ddp.check_in(trainer, site="EarlyStopping start")

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        # Lightning's documented extension point: called once per check, after `_should_skip_check`
        logs = trainer.callback_metrics
        if getattr(trainer, "fast_dev_run", False) or self.monitor in logs:
            self._check(trainer, self.monitor)
            return
        key = _per_loader_key(self.monitor, logs)
        if key is not None:  # two or more validation loaders: Lightning logs `val_loss/dataloader_idx_N`
            self.report(
                trainer,
                "overfitting",
                "info",
                f"early stopping monitors `{key}` (the first validation loader's `{self.monitor}`): with several "
                f"validation loaders Lightning logs one `{self.monitor}` per loader",
                advice=f"pass monitor={key!r} (or another loader's key) to choose explicitly",
                module=self.monitor,
            )
            monitor, self.monitor = self.monitor, key  # Lightning's check reads self.monitor
            try:
                self._check(trainer, key)
            finally:
                self.monitor = monitor
            return
        if self.strict and not self._skip_missing_monitor:
            super()._run_early_stopping_check(trainer)  # Lightning's RuntimeError, listing the available keys
            return
        available = ", ".join(f"`{k}`" for k in sorted(logs)) or "none"
        self._report_missing(trainer, f"it was never logged (available: {available})")

    def _check(self, trainer: pl.Trainer, key: str) -> None:
        before = self.best_score
        super()._run_early_stopping_check(trainer)
        logs = trainer.callback_metrics
        if getattr(trainer, "fast_dev_run", False) or key not in logs:
            return
        improved = self.best_score is not before  # Lightning rebinds best_score only on improvement
        if self.restore_best_weights and any_rank(trainer, improved):
            self.best_weights = best_weights_copy(trainer.lightning_module)
            self.best_epoch = trainer.current_epoch
        self._check_overfitting(trainer, float(logs[key].squeeze()))

    def _check_overfitting(self, trainer: pl.Trainer, current: float) -> None:
        train = trainer.callback_metrics.get(self.train_loss_key)
        if train is None:
            if not self._missing_train_reported:
                self._missing_train_reported = True
                available = ", ".join(sorted(trainer.callback_metrics)) or "none"
                self.report(
                    trainer,
                    "overfitting",
                    "info",
                    f"overfitting verdict skipped: `{self.train_loss_key}` is not in trainer.callback_metrics "
                    f"(available: {available}); log the training loss with self.log({self.train_loss_key!r}, loss, "
                    f"on_epoch=True) or pass EarlyStopping(train_loss_key=...) to get it",
                    skipped=True,
                )
            return
        self._val_history.append(current)
        self._train_history.append(float(train))
        acc = _metric(trainer.callback_metrics, _VAL_ACC_KEY)
        self._acc_history.append(float("nan") if acc is None else float(acc))
        sign = 1.0 if self.mode == "min" else -1.0  # the verdict wants "lower is better"
        verdict = overfitting_verdict(
            self._train_history,
            [sign * v for v in self._val_history],
            self.patience,
            val_accs=self._acc_history if self.mode == "min" else None,  # a monitored accuracy is its own evidence
            sign=sign,
            val_name=f"`{self.monitor}`",
            train_name=f"`{self.train_loss_key}`",
        )
        if verdict is None or verdict.severity is None:
            return
        advice = _ADVICE if verdict.severity == "warning" else "none needed yet; watch the validation accuracy (T2)"
        self.report(trainer, "overfitting", verdict.severity, verdict.message, advice=advice, figures=verdict.figures)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.restore_best_weights or self.best_weights is None:
            return
        pl_module.load_state_dict(self.best_weights)  # copies in place: devices and dtypes are kept
        best = float(self.best_score) if isinstance(self.best_score, torch.Tensor) else self.best_score
        rank_zero_info(
            f"EarlyStopping: restored the best weights ({self.monitor}={best:.4g}, epoch {self.best_epoch})."
        )

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        # beside Lightning's EarlyStopping state (wait_count, best_score, …) and the findings
        state: dict[str, Any] = dict(
            val_history=list(self._val_history),
            train_history=list(self._train_history),
            acc_history=list(self._acc_history),
            missing_train_reported=self._missing_train_reported,
            best_epoch=self.best_epoch,
        )
        if self.restore_best_weights and self.best_weights is not None:
            state["best_weights"] = self.best_weights
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._val_history = [float(v) for v in state_dict.get("val_history", [])]
        self._train_history = [float(v) for v in state_dict.get("train_history", [])]
        acc = [float(v) for v in state_dict.get("acc_history", [])]
        self._acc_history = acc if len(acc) == len(self._val_history) else [float("nan")] * len(self._val_history)
        self._missing_train_reported = bool(state_dict.get("missing_train_reported", False))
        self.best_epoch = state_dict.get("best_epoch")
        self.best_weights = state_dict.get("best_weights") if self.restore_best_weights else None

"""Learning curves: train and validation loss (and accuracy) on one chart, and the verdicts read
from them — ``overfitting`` and ``not-learning`` (tips T2, R2.3, R2.6, R2.9, T10).

The tuning handbook says: plot train and val accuracy on one chart every epoch and read under- and
over-fitting from it (T2); the recipe says evaluate on the whole validation set and plot it (R2.3),
put human-readable metrics beside the loss (R2.6), and verify the training loss goes down (R2.9).
:class:`LearningCurves` records one point per validation check (per epoch by default; per epoch
when there is no validation loop), draws the chart, logs the values as scalars, and reports:

- ``overfitting`` (warning): the validation loss stayed above its best for ``patience`` checks,
  by a rise beyond the curve's noise and at least 10% of the best, while the training loss kept
  falling and the validation accuracy (when known) fell; ``info`` when the accuracy did not fall
  (:func:`~lightning_tips.checks._curves.overfitting_verdict`);
- ``not-learning`` (warning): over the first ``min_points`` points the training loss never went
  below 0.98 x its first value nor down beyond its noise; ``info`` when it falls, slowly; nothing
  when a loss is non-finite (:func:`~lightning_tips.checks._curves.flat_loss_verdict`).

Pure functions first (:func:`render_learning_curves` and the shared verdicts); the callback is a
thin adapter.

Example:
    >>> history = {"epoch": [1.0, 2.0, 3.0], "train_loss": [1.0, 0.7, 0.5],
    ...            "val_loss": [1.1, 0.9, 0.95], "train_acc": [0.5, 0.7, 0.8], "val_acc": [0.5, 0.6, 0.6]}
    >>> img = render_learning_curves(history)
    >>> img.dtype, img.ndim, img.shape[2]
    (dtype('uint8'), 3, 3)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from lightning_tips import _ddp
from lightning_tips._callback import TipCallback
from lightning_tips._loggers import log_image, log_scalars
from lightning_tips._render import figure_to_array, new_figure
from lightning_tips._utils import split_batch
from lightning_tips._validate import check_int, check_str
from lightning_tips.checks._curves import flat_loss_verdict, overfitting_verdict

__all__ = ["HISTORY_KEYS", "LearningCurves", "render_learning_curves"]

HISTORY_KEYS = ("epoch", "step", "train_loss", "val_loss", "train_acc", "val_acc")
IMAGE_KEY = "tips/learning_curves"
SCALAR_PREFIX = "tips/curves/"
_LOGIT_KEYS = ("logits", "y_hat", "preds")
_TARGET_KEYS = ("target", "targets", "y", "labels", "label")


# --- pure functions ------------------------------------------------------------------------------
def _finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def render_learning_curves(history: Mapping[str, Sequence[float]], title: str = "learning curves (T2)") -> np.ndarray:
    """Train and validation loss per point on one panel (the best validation loss starred), and —
    when any accuracy was recorded — train and validation accuracy on a second panel. Missing values
    are NaN and are not drawn. Returns an HxWx3 uint8 array."""
    epoch = list(history.get("epoch", []))
    accs = [k for k in ("train_acc", "val_acc") if any(math.isfinite(v) for v in history.get(k, []))]
    fig = new_figure(9.0 if accs else 5.5, 3.8)
    ax = fig.add_subplot(1, 2 if accs else 1, 1)
    styles = {"train_loss": ("train", "tab:blue", "o-"), "val_loss": ("validation", "tab:orange", "s-")}
    for key, (label, color, fmt) in styles.items():
        xs, ys = _finite(epoch, history.get(key, []))
        if ys:
            ax.plot(xs, ys, fmt, color=color, label=label, markersize=4)
    vx, vy = _finite(epoch, history.get("val_loss", []))
    if vy:
        best = int(np.argmin(vy))
        ax.plot([vx[best]], [vy[best]], "*", color="tab:red", markersize=12, label=f"best val {vy[best]:.4g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if accs:
        ax2 = fig.add_subplot(1, 2, 2)
        for key, (label, color, fmt) in {
            "train_acc": ("train", "tab:blue", "o-"),
            "val_acc": ("validation", "tab:orange", "s-"),
        }.items():
            xs, ys = _finite(epoch, history.get(key, []))
            if ys:
                ax2.plot(xs, ys, fmt, color=color, label=label, markersize=4)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("accuracy")
        ax2.set_title("accuracy (R2.6)", fontsize=10)
        ax2.grid(True, alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return figure_to_array(fig)


def _step_loss(outputs: Any) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss.detach().float().reshape(())
    return None


def _logits_and_targets(outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(logits, targets)`` when ``outputs`` is a dict holding logits (targets from the dict or the
    batch) with matching batch dimensions and a classification shape; shapes only, no device sync."""
    if not isinstance(outputs, Mapping):
        return None
    logits = next((outputs[k] for k in _LOGIT_KEYS if isinstance(outputs.get(k), torch.Tensor)), None)
    if logits is None:
        return None
    target = next((outputs[k] for k in _TARGET_KEYS if isinstance(outputs.get(k), torch.Tensor)), None)
    if target is None:
        split = split_batch(batch)
        target = split[1] if split is not None else None
    if target is None or logits.dim() == 0 or target.dim() == 0 or logits.shape[0] != target.shape[0]:
        return None
    multiclass = logits.dim() == 2 and logits.shape[1] > 1 and target.dim() == 1
    binary = logits[0].numel() == 1 and target[0].numel() == 1
    if not (multiclass or binary) or (multiclass and (target.is_floating_point() or target.is_complex())):
        return None
    return logits.detach(), target.detach()


def _correct(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 where the prediction is right: arg-max for ``(N, C)`` logits, ``logit > 0`` for one logit."""
    if logits.dim() == 2 and logits.shape[1] > 1:
        pred = logits.argmax(1)
        return (pred == target.long()).long()
    pred = (logits.reshape(-1) > 0).long()
    return (pred == (target.reshape(-1) > 0.5).long()).long()


# --- the callback --------------------------------------------------------------------------------
class LearningCurves(TipCallback):
    """Train/validation loss and accuracy on one chart, and the ``overfitting`` and
    ``not-learning`` verdicts (tips T2, R2.3, R2.6, R2.9, T10).

    One point per validation check (per epoch by default) — or per training epoch when there is no
    validation loop, in which case only the training curve is drawn:

    - **train loss**: the mean of the ``training_step`` losses since the previous point,
      accumulated on the device in ``on_train_batch_end`` (no host sync per step) and summed across
      DDP ranks once per point;
    - **validation loss**: ``trainer.callback_metrics[val_loss_key]`` when you log it, else the mean of
      the losses ``validation_step`` returns (a tensor, or a dict with ``"loss"``) on the first
      validation dataloader;
    - **accuracy**, two ways: (1) return the logits from the step — ``return {"loss": loss,
      "logits": logits}`` from ``training_step`` and/or ``validation_step`` (targets are taken from
      a ``"target"``/``"y"``/``"labels"`` key or from the ``(x, y)`` batch); a torchmetrics
      ``BinaryAccuracy`` kept on the callback (on the module's device, synced across ranks) counts
      the correct arg-max / ``logit > 0`` predictions; or (2) log ``train_acc_key`` / ``val_acc_key``
      yourself with ``self.log`` and they are read from ``trainer.callback_metrics``; a logged train
      accuracy is read at the end of the training epoch, when Lightning has aggregated it (at a
      validation check it still holds the previous epoch's value): the epoch's last point gets
      exactly your epoch value, logged once; a point of a mid-epoch check gets none.

    Each point is logged as scalars ``tips/curves/train_loss``, ``tips/curves/val_loss``,
    ``tips/curves/train_acc``, ``tips/curves/val_acc`` and the chart as the image
    ``tips/learning_curves`` (W&B, TensorBoard, or PNG files under ``<run dir>/tips``).

    Findings (each at most once per fit, also across a resume):

    - ``overfitting`` (warning): the validation loss stayed above its best for ``patience`` points
      while the training loss fell below its value at the best point, by a rise beyond the noise
      and >= 10% of the best, and the validation accuracy (when known) fell (T2, R4.9); ``info``
      when the accuracy did not fall; a skipped ``info`` when no validation loss can be seen or
      there is no validation loop (:func:`~lightning_tips.checks._curves.overfitting_verdict`);
    - ``not-learning`` (warning): after ``min_points`` points no training loss went below 0.98 x
      the first nor down beyond the noise (R2.9, T10); ``info`` when it falls slowly; nothing when a
      loss is NaN/Inf (the non-finite guard's root cause); a skipped ``info`` when ``training_step``
      returns no loss.

    The history and the reported verdicts are checkpointed: a resumed run continues the curves.

    Args:
        patience: validation checks the validation loss must stay above its best.
        min_points: points needed before the ``not-learning`` verdict (its "first epochs").
        val_loss_key: the logged validation-loss key.
        train_acc_key: the logged training-accuracy key (way 2).
        val_acc_key: the logged validation-accuracy key (way 2).
        image_every_n_steps: draw the chart at the first point, then at most every this many steps,
            and at the end of training (``None``: at every point; ``0``: at the first point and the end only). The scalars are logged at every point either way.

    Example:
        >>> from lightning_tips.checks._curves import overfitting_verdict
        >>> overfitting_verdict([1.0, 0.8, 0.6, 0.5, 0.4], [0.9, 0.7, 0.75, 0.8, 0.85], patience=3).figures["best_val"]
        0.7
        >>> LearningCurves(patience=3).state_key
        "LearningCurves{'patience': 3, 'min_points': 3, 'val_loss_key': 'val_loss'}"
        >>> LearningCurves(patience=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected patience to be an int >= 1 but got 0.
    """

    def __init__(
        self,
        patience: int = 3,
        min_points: int = 3,
        val_loss_key: str = "val_loss",
        train_acc_key: str = "train_acc",
        val_acc_key: str = "val_acc",
        image_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        check_int("image_every_n_steps", image_every_n_steps, low=0, optional=True)
        self.image_every_n_steps = image_every_n_steps
        self._drawn_points, self._drawn_step = -1, 0
        self._acc_from_log, self._point_epoch = False, -1
        check_int("patience", patience, low=1)
        check_int("min_points", min_points, low=2)
        for name, key in (("val_loss_key", val_loss_key), ("train_acc_key", train_acc_key), ("val_acc_key", val_acc_key)):
            check_str(name, key)
        self.patience = patience
        self.min_points = min_points
        self.val_loss_key = val_loss_key
        self.train_acc_key = train_acc_key
        self.val_acc_key = val_acc_key
        self.history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
        self._reported: set[str] = set()
        self._train_metric: Any = None
        self._val_metric: Any = None
        self._reset_train()
        self._reset_val()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            patience=self.patience, min_points=self.min_points, val_loss_key=self.val_loss_key
        )

    # --- accumulators ----------------------------------------------------------------------------
    def _reset_train(self) -> None:
        self._train_sum: torch.Tensor | None = None
        self._train_n = 0
        self._train_acc_n = 0
        self._last_batch_idx = -1
        if self._train_metric is not None:
            self._train_metric.reset()

    def _reset_val(self) -> None:
        self._val_sum: torch.Tensor | None = None
        self._val_n = 0
        self._val_acc_n = 0
        if self._val_metric is not None:
            self._val_metric.reset()

    def _metric(self, pl_module: pl.LightningModule) -> Any:
        from torchmetrics.classification import BinaryAccuracy

        # counts "prediction == target" indicators: the same number as Multiclass/BinaryAccuracy
        # (micro), but without the bincount/range checks that sync with the device every step
        return BinaryAccuracy(validate_args=False).to(pl_module.device)

    # --- hooks -----------------------------------------------------------------------------------
    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drawn_points, self._drawn_step = -1, 0
        self.history = {k: [] for k in HISTORY_KEYS}
        self._reported = set()
        self._reset_train()
        self._reset_val()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_train()
        # its collectives come at epoch ends: ranks with uneven epochs must stop here, not deadlock there
        _ddp.check_in(trainer, site="LearningCurves start")
        if not trainer.enable_validation:
            self._once(
                trainer, "overfitting", "no-validation",
                "LearningCurves: there is no validation loop, so only the training curve is drawn and "
                "overfitting cannot be checked.",
                skipped=True,
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._last_batch_idx = batch_idx
        loss = _step_loss(outputs)
        if loss is not None:
            if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
                loss = loss * trainer.accumulate_grad_batches  # Lightning divides it for accumulation
            self._train_sum = loss if self._train_sum is None else self._train_sum + loss
            self._train_n += 1
        pair = _logits_and_targets(outputs, batch)
        if pair is not None:
            if self._train_metric is None:
                self._train_metric = self._metric(pl_module)
            correct = _correct(*pair)
            self._train_metric.update(correct, torch.ones_like(correct))
            self._train_acc_n += 1

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_val()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0:
            return
        loss = _step_loss(outputs)
        if loss is not None:
            self._val_sum = loss if self._val_sum is None else self._val_sum + loss
            self._val_n += 1
        pair = _logits_and_targets(outputs, batch)
        if pair is not None:
            if self._val_metric is None:
                self._val_metric = self._metric(pl_module)
            correct = _correct(*pair)
            self._val_metric.update(correct, torch.ones_like(correct))
            self._val_acc_n += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._record(trainer, pl_module, validated=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.enable_validation or not any(trainer.num_val_batches):
            self._record(trainer, pl_module, validated=False)
        elif self._acc_from_log and self._point_epoch == trainer.current_epoch:
            # a train accuracy logged on_epoch is aggregated only now: at this epoch's validation it
            # still held the previous epoch's value, so the point was left without one (never logged
            # stale) and gets the fresh value here — one value per point, the user's own
            value = self._metric_value(trainer, self.train_acc_key)
            if value is not None and self.history["train_acc"] and math.isnan(self.history["train_acc"][-1]):
                fresh = float(value.item())  # once per epoch
                self.history["train_acc"][-1] = fresh
                log_scalars(trainer, {f"{SCALAR_PREFIX}train_acc": fresh}, step=int(self.history["step"][-1]))

    # --- one point -------------------------------------------------------------------------------
    def _metric_value(self, trainer: pl.Trainer, key: str) -> torch.Tensor | None:
        metrics = trainer.callback_metrics
        # several validation loaders: Lightning logs `key/dataloader_idx_N`; the curves follow the first loader
        value = metrics.get(key, metrics.get(f"{key}/dataloader_idx_0"))
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.detach().float().reshape(())
        return None

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, validated: bool) -> None:
        device = pl_module.device
        zero = torch.zeros((), device=device)
        one = torch.ones((), device=device)
        entries: list[torch.Tensor] = [
            self._train_sum if self._train_sum is not None else zero,
            one * self._train_n,
            self._val_sum if (validated and self._val_sum is not None) else zero,
            one * (self._val_n if validated else 0),
        ]
        # (value, present) pairs: the logged val loss, then train and val accuracy
        logged_val = self._metric_value(trainer, self.val_loss_key) if validated else None
        self._acc_from_log = not (self._train_metric is not None and self._train_acc_n > 0)
        self._point_epoch = trainer.current_epoch
        if not self._acc_from_log:
            train_acc = self._train_metric.compute().float()  # type: ignore[union-attr]
        else:  # at a validation check a logged on_epoch value is the previous epoch's: read at epoch end
            train_acc = None if validated else self._metric_value(trainer, self.train_acc_key)
        val_acc = None
        if validated:
            val_acc = (
                self._val_metric.compute().float()
                if self._val_metric is not None and self._val_acc_n > 0
                else self._metric_value(trainer, self.val_acc_key)
            )
        for value in (logged_val, train_acc, val_acc):
            entries += [value.to(device), one] if value is not None else [zero, zero]
        sums = _ddp.reduce(trainer, {"point": torch.stack(entries)}, site="LearningCurves point")["point"].tolist()  # the one host sync
        t_sum, t_n, v_sum, v_n, lv, lv_n, ta, ta_n, va, va_n = sums
        nan = float("nan")
        train_loss = t_sum / t_n if t_n else nan
        val_loss = lv / lv_n if lv_n else (v_sum / v_n if v_n else nan)
        point = {
            "epoch": self._epoch_position(trainer),
            "step": float(trainer.global_step),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_acc": ta / ta_n if ta_n else nan,
            "val_acc": va / va_n if va_n else nan,
        }
        for k in HISTORY_KEYS:
            self.history[k].append(point[k])
        self._reset_train()
        if validated:
            self._reset_val()

        scalars = {f"{SCALAR_PREFIX}{k}": v for k, v in point.items() if k not in ("epoch", "step") and math.isfinite(v)}
        log_scalars(trainer, scalars)
        self._verdicts(trainer, validated, t_n > 0, math.isfinite(val_loss))
        self._draw(trainer, force=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer, force=True)

    def _draw(self, trainer: pl.Trainer, force: bool) -> None:
        """The chart (~0.1 s of matplotlib): at every point, or at the first point, at most every
        ``image_every_n_steps`` steps, and at the end of training."""
        points = len(self.history["step"])
        if not trainer.is_global_zero or points == 0 or points == self._drawn_points:
            return
        period = self.image_every_n_steps
        due = period is None or (period > 0 and trainer.global_step - self._drawn_step >= period)
        if force or self._drawn_points < 0 or due:
            log_image(trainer, IMAGE_KEY, render_learning_curves(self.history))
            self._drawn_points, self._drawn_step = points, trainer.global_step

    def _epoch_position(self, trainer: pl.Trainer) -> float:
        total = trainer.num_training_batches
        if isinstance(total, int) and total > 0 and self._last_batch_idx >= 0:
            return trainer.current_epoch + min(1.0, (self._last_batch_idx + 1) / total)
        return float(trainer.current_epoch + 1)

    # --- verdicts --------------------------------------------------------------------------------
    def _once(self, trainer: pl.Trainer, code: str, tag: str, message: str, advice: str = "", severity: str = "info",
              figures: Mapping[str, float] | None = None, skipped: bool = False) -> None:
        if tag in self._reported:
            return
        self._reported.add(tag)
        self.report(trainer, code, severity, message, advice="" if skipped else advice, figures=figures, skipped=skipped)

    def _verdicts(self, trainer: pl.Trainer, validated: bool, saw_train_loss: bool, saw_val_loss: bool) -> None:
        if not saw_train_loss:
            self._once(
                trainer, "not-learning", "no-train-loss",
                "LearningCurves cannot check that the training loss goes down: training_step returned no "
                "loss tensor (manual optimization or a None return) — return the loss (a tensor, or a dict with "
                "'loss') to get this check (R2.9).",
                skipped=True,
            )
        if validated and not saw_val_loss:
            self._once(
                trainer, "overfitting", "no-val-loss",
                f"LearningCurves cannot check for overfitting: no validation loss — `{self.val_loss_key}` is "
                f"not logged and validation_step returns no loss (self.log('{self.val_loss_key}', loss) in "
                "validation_step, or return the loss from it, to get this check).",
                skipped=True,
            )
        train = self.history["train_loss"]
        flat = flat_loss_verdict(train, min_points=self.min_points)  # None once a loss is NaN/Inf (root cause)
        if flat is not None and flat.severity is not None:
            self._once(
                trainer, "not-learning", f"not-learning-{flat.severity}", f"{flat.message}.",
                severity=flat.severity, figures=flat.figures,
            )
        points = [
            (t, v, a) for t, v, a in zip(train, self.history["val_loss"], self.history["val_acc"])
            if math.isfinite(t) and math.isfinite(v)
        ]  # fmt: skip
        over = overfitting_verdict(
            [p[0] for p in points], [p[1] for p in points], patience=self.patience, val_accs=[p[2] for p in points]
        )
        if over is not None and over.severity is not None:
            self._once(
                trainer, "overfitting", f"overfitting-{over.severity}", f"{over.message}.",
                severity=over.severity, figures=over.figures,
            )

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        state["history"] = {k: list(v) for k, v in self.history.items()}
        state["reported"] = sorted(self._reported)
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        history = state_dict.get("history", {})
        self.history = {k: [float(v) for v in history.get(k, [])] for k in HISTORY_KEYS}
        legacy = {"overfitting": "overfitting-warning", "not-learning": "not-learning-warning"}  # older checkpoints
        self._reported = {legacy.get(tag, tag) for tag in state_dict.get("reported", [])}

"""Predictions on a fixed batch, logged during training (tip R2.11).

The recipe says: pick a fixed batch and watch the model's predictions on it evolve while it trains
(R2.11) — it shows what the network gets right first, which samples it never gets, and catches
label/prediction mix-ups that a loss curve hides. :class:`FixedBatchPredictions` picks the batch
once when training starts and every ``every_n_steps`` logs the model's predictions on it:

- classification (2-D logits ``(N, C)`` with ``C > 1``, or one logit per sample for binary
  targets): an image grid for image-like inputs (``(N, C, H, W)`` / ``(N, H, W)``), each panel
  titled ``true 3 / pred 5 (0.87)``, green when right and red when wrong; always a table
  (``index, true, predicted, confidence``);
- regression (floating-point targets): a predicted-vs-true scatter and a table
  (``index, true, predicted, abs_error``).

Pure functions first (:func:`summarize_predictions`, :func:`render_prediction_grid`,
:func:`render_regression_scatter`, :func:`eval_forward`); the callback is a thin adapter.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    >>> s = summarize_predictions(logits, torch.tensor([0, 1, 1]))
    >>> s.kind, s.true, s.predicted, [round(c, 2) for c in s.confidence], s.correct
    ('classification', [0, 1, 1], [0, 1, 0], [0.88, 0.95, 0.73], [True, True, False])
    >>> summarize_predictions(torch.zeros(3, 4, 5), torch.zeros(3, dtype=torch.long))
    'outputs of shape (3, 4, 5) do not match targets of shape (3,) (expected (N, C) logits, one logit per sample, or a regression output shaped like the targets)'
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_tips._batch import (
    LAYOUTS,
    call_forward,
    describe_layout,
    independent_copy,
    output_logits,
    peek_batches,
    preserved_owned_rng,
    split_batch,
    stream_reason,
)
from lightning_tips._callback import TipCallback
from lightning_tips._loggers import log_image, log_table
from lightning_tips._render import figure_to_array, new_figure
from lightning_tips._utils import apply_to_tensors, is_sampled, preserved_rng
from lightning_tips._validate import check_int, check_str

__all__ = [
    "FixedBatchPredictions",
    "PredictionSummary",
    "eval_forward",
    "render_prediction_grid",
    "render_regression_scatter",
    "summarize_predictions",
]

IMAGE_KEY = "tips/fixed_batch/predictions"
TABLE_KEY = "tips/fixed_batch/table"
CLASSIFICATION_COLUMNS = ["index", "true", "predicted", "confidence"]
REGRESSION_COLUMNS = ["index", "true", "predicted", "abs_error"]
_RIGHT, _WRONG = "#1a9641", "#d7191c"  # green / red


# --- pure functions ------------------------------------------------------------------------------
@dataclass
class PredictionSummary:
    """What the model predicted on the fixed batch, as plain Python values (one entry per sample).

    ``kind`` is ``"classification"`` (``true``/``predicted`` are class ids, ``confidence`` the
    predicted class's probability) or ``"regression"`` (``true``/``predicted`` are floats, or lists of
    floats for multi-output regression; ``confidence`` is empty).
    """

    kind: Literal["classification", "regression"]
    true: list[Any]
    predicted: list[Any]
    confidence: list[float]

    @property
    def correct(self) -> list[bool]:
        """Per sample: the prediction equals the label (classification only)."""
        return [t == p for t, p in zip(self.true, self.predicted)]

    def rows(self, indices: Sequence[int] | None = None) -> tuple[list[str], list[list[Any]]]:
        """Table columns and rows; ``indices`` are the samples' dataset indices (default 0..N-1)."""
        idx = list(indices) if indices is not None else list(range(len(self.true)))
        if self.kind == "classification":
            rows = [[i, t, p, round(c, 4)] for i, t, p, c in zip(idx, self.true, self.predicted, self.confidence)]
            return CLASSIFICATION_COLUMNS, rows
        rows = []
        for i, t, p in zip(idx, self.true, self.predicted):
            if isinstance(t, list):
                err = float(np.mean(np.abs(np.asarray(t) - np.asarray(p))))
                rows.append([i, _short(t), _short(p), round(err, 4)])
            else:
                rows.append([i, round(t, 4), round(p, 4), round(abs(t - p), 4)])
        return REGRESSION_COLUMNS, rows


def _short(values: list[float], n: int = 4) -> str:
    head = ", ".join(f"{v:.3g}" for v in values[:n])
    return f"[{head}{', …' if len(values) > n else ''}]"


def summarize_predictions(outputs: torch.Tensor, targets: torch.Tensor) -> PredictionSummary | str:
    """Interpret a model's outputs against the targets; a string says why they cannot be read.

    - ``(N, C)`` logits, ``C > 1``, with integer targets ``(N,)`` (or one-hot/soft ``(N, C)`` float
      targets whose rows sum to 1): softmax; the prediction is the arg-max, the confidence its probability.
    - one logit per sample (``(N,)`` or ``(N, 1)``) with integer/bool targets, or float targets that
      are all 0/1: binary, sigmoid; confidence is the probability of the predicted class.
    - floating-point targets otherwise, with outputs of the same number of elements per sample:
      regression.

    Outputs are raw logits (no activation on the output layer, tip P3).
    """
    out = outputs.detach().float().cpu()
    y = targets.detach().cpu()
    n = out.shape[0] if out.dim() > 0 else 0
    if n == 0 or y.dim() == 0 or y.shape[0] != n:
        return (
            f"outputs of shape {tuple(out.shape)} and targets of shape {tuple(y.shape)} do not share "
            "a batch dimension"
        )
    integer = not (y.is_floating_point() or y.is_complex())
    per_sample_out = out[0].numel()
    if out.dim() == 2 and out.shape[1] > 1:
        if integer and y.dim() == 1:
            true = y.long()
        elif not integer and tuple(y.shape) == tuple(out.shape) and _is_distribution(y):
            true = y.argmax(1)
        else:
            true = None
        if true is not None:
            probs = out.softmax(1)
            conf, pred = probs.max(1)
            return PredictionSummary("classification", true.tolist(), pred.tolist(), conf.tolist())
    y_flat = y.reshape(n, -1)
    if per_sample_out == 1 and y_flat.shape[1] == 1:
        yv = y_flat[:, 0]
        binary = integer or bool(((yv == 0) | (yv == 1)).all())
        if binary:
            p = out.reshape(n).sigmoid()
            pred = (p > 0.5).long()
            conf = torch.where(pred == 1, p, 1 - p)
            return PredictionSummary("classification", yv.long().tolist(), pred.tolist(), conf.tolist())
    if not integer and y_flat.shape[1] == per_sample_out:
        o_flat = out.reshape(n, -1)
        if per_sample_out == 1:
            return PredictionSummary("regression", y_flat[:, 0].float().tolist(), o_flat[:, 0].tolist(), [])
        return PredictionSummary("regression", y_flat.float().tolist(), o_flat.tolist(), [])
    return (
        f"outputs of shape {tuple(out.shape)} do not match targets of shape {tuple(y.shape)} (expected "
        "(N, C) logits, one logit per sample, or a regression output shaped like the targets)"
    )


def _is_distribution(y: torch.Tensor) -> bool:
    """Rows of non-negative values summing to 1: one-hot or soft labels, not regression targets."""
    y = y.float()
    return bool((y >= 0).all()) and torch.allclose(y.sum(1), torch.ones(y.shape[0]), atol=1e-3)


def is_image_batch(inputs: Any) -> bool:
    """Floating-point ``(N, C, H, W)`` with ``C`` in 1..4, or ``(N, H, W)``, both sides >= 4 pixels."""
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        return False
    if inputs.dim() == 4:
        return 1 <= inputs.shape[1] <= 4 and min(inputs.shape[2:]) >= 4
    return inputs.dim() == 3 and min(inputs.shape[1:]) >= 4


def render_prediction_grid(images: torch.Tensor, summary: PredictionSummary, title: str = "") -> np.ndarray:
    """A grid of small panels, one per sample, titled ``true 3 / pred 5 (0.87)``: green when right,
    red when wrong. Single-channel images are drawn in grey over one shared value range (stated in
    the figure title, tip P14); 3-channel ones as RGB; 2 or 4 channels show the first.
    Returns an HxWx3 uint8 array."""
    arr = images.detach().float().cpu().numpy()
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.shape[1] != 3:
        arr = arr[:, :1]
    lo, hi = float(arr.min()), float(arr.max())
    n = arr.shape[0]
    ncols = max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    fig = new_figure(1.35 * ncols, 1.45 * nrows + 0.45)
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if arr.shape[1] == 3:
            span = hi - lo if hi > lo else 1.0
            ax.imshow(np.transpose((arr[i] - lo) / span, (1, 2, 0)), interpolation="nearest")
        else:
            ax.imshow(arr[i, 0], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        t, p = summary.true[i], summary.predicted[i]
        conf = summary.confidence[i] if i < len(summary.confidence) else float("nan")
        color = _RIGHT if t == p else _WRONG
        ax.set_title(f"true {t} / pred {p} ({conf:.2f})", fontsize=7, color=color)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2)
    right = sum(summary.correct)
    head = f"{title} — " if title else ""
    fig.suptitle(f"{head}{right}/{n} right; inputs shown over [{lo:.3g}, {hi:.3g}]", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return figure_to_array(fig)


def render_regression_scatter(summary: PredictionSummary, title: str = "") -> np.ndarray:
    """Predicted vs true (every output element), with the ``y = x`` diagonal; HxWx3 uint8."""
    true = np.asarray(summary.true, dtype=np.float64).ravel()
    pred = np.asarray(summary.predicted, dtype=np.float64).ravel()
    fig = new_figure(4.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(true, pred, s=14, alpha=0.8)
    finite = np.concatenate([true, pred])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", linewidth=1)
    mae = float(np.nanmean(np.abs(true - pred))) if true.size else float("nan")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    head = f"{title} — " if title else ""
    ax.set_title(f"{head}MAE {mae:.3g}", fontsize=9)
    fig.tight_layout()
    return figure_to_array(fig)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside the block; each one's own mode restored after."""
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def eval_forward(module: nn.Module, inputs: Any) -> Any:
    """``module(inputs)`` (``module(**inputs)`` for a Hugging Face-style dict, see
    :func:`~lightning_tips._batch.call_forward`) in eval mode, under ``torch.no_grad()`` and :func:`preserved_rng`, with
    each submodule's train/eval mode restored exactly afterwards: the model, its BatchNorm running
    statistics and the RNG streams are as they were.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
        >>> _ = net[1].eval()  # a frozen BatchNorm stays frozen
        >>> eval_forward(net, torch.ones(4, 2)).shape, [m.training for m in net.modules()]
        (torch.Size([4, 2]), [True, True, False, True])
    """
    devices = [p.device for p in module.parameters()][:1]
    with preserved_rng(devices), torch.no_grad(), _eval_mode(module):
        return call_forward(module, inputs)


def _first_loader(loaders: Any) -> Any:
    if isinstance(loaders, Mapping):
        return next(iter(loaders.values()), None)
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def pick_batch(loader: Any, num_samples: int) -> tuple[Any, list[int] | None] | None:
    """The first ``num_samples`` samples of ``loader`` (on the CPU) and their dataset indices.

    A map-style dataset is read by index ``0..num_samples-1`` — through an independent copy of the
    dataset and ``collate_fn`` (:func:`~lightning_tips._batch.independent_copy`), so a dataset's own
    generators and counters do not move — and collated with the loader's ``collate_fn`` (its first
    batch when unshuffled, whatever the sampler). A list of batches gives its first batch, cut to
    ``num_samples`` (indices unknown). A stream is not read (``None``): it would lose samples to
    training. Call it inside :func:`preserved_rng`.
    """
    if loader is None or stream_reason(loader) is not None:
        return None
    if isinstance(loader, DataLoader):
        dataset = loader.dataset
        if loader.batch_size is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            return _cut(_first(loader), num_samples)
        n = min(num_samples, len(dataset))
        if n == 0:
            return None
        indices = list(range(n))
        copied = independent_copy((dataset, loader.collate_fn))
        if copied is None:  # cannot be copied: read in place, its own generators restored
            with preserved_owned_rng(loader, dataset, loader.collate_fn):
                batch = loader.collate_fn([dataset[i] for i in indices])
        else:
            ds, collate = copied
            batch = collate([ds[i] for i in indices])
        return apply_to_tensors(batch, lambda t: t.detach().cpu()), indices
    return _cut(_first(loader), num_samples)


def _first(loader: Any) -> tuple[Any, Any] | None:
    with closing(peek_batches(loader)) as batches:
        return next(batches, None)


def _cut(picked: tuple[Any, Any] | None, num_samples: int) -> tuple[Any, None] | None:
    if picked is None:
        return None
    batch = apply_to_tensors(
        picked[0], lambda t: t.detach()[:num_samples].cpu() if t.dim() > 0 else t.detach().cpu()
    )
    return batch, None


# --- the callback --------------------------------------------------------------------------------
class FixedBatchPredictions(TipCallback):
    """Predictions on a fixed batch, logged every ``every_n_steps`` (tip R2.11).

    When training starts it picks a fixed batch — the first ``num_samples`` samples of the first
    validation dataloader, or of the training dataloader when there is no validation loop — under
    :func:`~lightning_tips._utils.preserved_rng` (your RNG streams are untouched), reading a copy of
    the dataset (its own generators do not move), and keeps it on the CPU. A streaming loader
    (``IterableDataset``) is never read ahead: the fixed batch is then the first batch training sees. At the start, on every sampled step (``global_step % every_n_steps == 0``) and once at the
    end of the fit it runs the real module's ``forward`` on it in eval mode, under ``no_grad`` and
    ``preserved_rng``, restoring each submodule's train/eval mode afterwards: weights, BatchNorm
    statistics and RNG are unchanged (a pure observer).

    Logged (through the logger adapter: W&B, TensorBoard, or files under ``<run dir>/tips``):
    ``tips/fixed_batch/predictions`` — an image grid (classification on image-like inputs, each
    panel ``true 3 / pred 5 (0.87)``, green/red) or a predicted-vs-true scatter (regression);
    ``tips/fixed_batch/table`` — ``index, true, predicted, confidence`` (classification) or
    ``index, true, predicted, abs_error`` (regression). Token ids and other non-image inputs get the
    table only.

    Reports ``view-skipped`` (a skipped info, once: the accepted layouts and the arguments to set) and
    stops when the batch has no recognisable ``(inputs, targets)`` layout, the model returns neither
    a tensor nor an output with ``logits``, or the outputs cannot be read as logits or a regression
    output; it never stops training. The batch and its dataset indices are
    checkpointed: a resumed run keeps watching the same samples.

    Batches: ``(inputs, targets)``, a dict with known input/target keys, or a Hugging Face-style
    dict (``input_ids``, ``attention_mask``, …, ``labels``: the model is called as
    ``forward(**inputs)`` and the ``logits`` of its output object or dict are read); name the fields
    of any other dict with ``input_key`` / ``target_key``.

    Args:
        every_n_steps: log every this many optimizer steps (``0``: only at the start and the end).
        num_samples: how many samples the fixed batch holds (at most).
        input_key: the batch dict's key holding the model's input (e.g. ``"pixels"``), when it is
            not one of the recognised keys; for a tuple batch, its position (``"0"``).
        target_key: the batch dict's key holding the targets (e.g. ``"cls"``); for a tuple batch,
            its position (``"1"``).

    Example:
        >>> cb = FixedBatchPredictions(every_n_steps=100, num_samples=8)
        >>> cb.state_key
        "FixedBatchPredictions{'every_n_steps': 100, 'num_samples': 8}"
        >>> FixedBatchPredictions(num_samples=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected num_samples to be an int >= 1 but got 0.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        num_samples: int = 16,
        input_key: str | None = None,
        target_key: str | None = None,
    ) -> None:
        super().__init__()
        check_int("every_n_steps", every_n_steps, low=0)
        check_int("num_samples", num_samples, low=1)
        check_str("input_key", input_key, optional=True)
        check_str("target_key", target_key, optional=True)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.input_key = input_key
        self.target_key = target_key
        self._reset()

    def _reset(self) -> None:
        self._batch: Any = None
        self._indices: list[int] | None = None
        self._last_step = -1
        self._skipped = False
        self._from_loop = False  # the training loader is a stream: keep the first batch the loop hands over

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, num_samples=self.num_samples)

    @property
    def batch(self) -> Any:
        """The fixed batch (on the CPU), or ``None`` before training starts."""
        return self._batch

    @property
    def indices(self) -> list[int] | None:
        """The fixed batch's dataset indices, when the dataset is indexable."""
        return None if self._indices is None else list(self._indices)

    # --- hooks -----------------------------------------------------------------------------------
    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skipped:
            return
        if self._batch is None:
            source = "validation"
            loader = _first_loader(trainer.val_dataloaders) if trainer.enable_validation else None
            if loader is None or stream_reason(loader) is not None:
                source, loader = "training", _first_loader(trainer.train_dataloader)
            if loader is not None and stream_reason(loader) is not None:
                self._from_loop = True  # a stream: take the first batch the loop hands over
                return
            try:
                with preserved_rng([pl_module.device]):
                    picked = pick_batch(loader, self.num_samples)
            except Exception as err:  # a dataset we cannot index or iterate: skip, never crash
                picked = None
                reason = f"could not read a batch from the {source} dataloader ({type(err).__name__}: {err})"
            else:
                reason = f"the {source} dataloader yielded no batch"
            if picked is None:
                self._skip(trainer, reason)
                return
            self._batch, self._indices = picked
        self._log(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """A streaming loader is not read ahead: the fixed batch is the first one training sees."""
        if not self._from_loop or self._batch is not None or self._skipped:
            return
        self._from_loop = False
        self._batch = apply_to_tensors(
            batch, lambda t: t.detach()[: self.num_samples].cpu().clone() if t.dim() > 0 else t.detach().cpu().clone()
        )
        self._log(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if is_sampled(trainer.global_step, self.every_n_steps):
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)

    # --- work ------------------------------------------------------------------------------------
    def _skip(self, trainer: pl.Trainer, reason: str) -> None:
        self._skipped = True
        self.report(
            trainer,
            "view-skipped",
            "info",
            f"FixedBatchPredictions skipped: {reason}.",
            module="FixedBatchPredictions",
            skipped=True,
        )

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self._skipped or self._batch is None or step == self._last_step:
            return
        self._last_step = step
        split = split_batch(self._batch, self.input_key, self.target_key)
        if split is None or not isinstance(split[1], torch.Tensor):
            named = (f"input_key={self.input_key!r}, target_key={self.target_key!r} do not match it"
                     if self.input_key or self.target_key else
                     "name its fields with FixedBatchPredictions(input_key=..., target_key=...)")
            self._skip(trainer, f"the batch layout ({describe_layout(self._batch)}) has no recognisable "
                       f"(inputs, targets): accepted are {LAYOUTS}; {named}")
            return
        inputs, targets = split
        precision = trainer.precision_plugin
        try:
            device_inputs = apply_to_tensors(inputs, lambda t: t.to(pl_module.device))
            device_inputs = precision.convert_input(device_inputs)
            with precision.forward_context():
                raw = eval_forward(pl_module, device_inputs)
        except Exception as err:  # the user's forward does not take the batch's inputs
            self._skip(trainer, f"forward(inputs) raised {type(err).__name__}: {err}")
            return
        outputs = output_logits(raw)
        if outputs is None:
            self._skip(trainer, f"the model returned a {type(raw).__name__}, not one tensor (nor an output "
                       "with `.logits`)")
            return
        summary = summarize_predictions(outputs, targets)
        if isinstance(summary, str):
            self._skip(trainer, summary)
            return
        if not trainer.is_global_zero:
            return
        title = f"step {step}"
        columns, rows = summary.rows(self._indices)
        log_table(trainer, TABLE_KEY, columns, rows, step=step)
        if summary.kind == "regression":
            log_image(trainer, IMAGE_KEY, render_regression_scatter(summary, title), step=step)
        else:
            images = inputs.get("pixel_values") if isinstance(inputs, Mapping) else inputs  # HF image models
            if isinstance(images, torch.Tensor) and is_image_batch(images):
                log_image(trainer, IMAGE_KEY, render_prediction_grid(images, summary, title), step=step)

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        state.update(batch=self._batch, indices=self._indices, last_step=self._last_step, skipped=self._skipped)
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._batch = state_dict.get("batch")
        indices = state_dict.get("indices")
        self._indices = None if indices is None else [int(i) for i in indices]
        self._last_step = int(state_dict.get("last_step", -1))
        self._skipped = bool(state_dict.get("skipped", False))

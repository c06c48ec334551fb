"""The first batch as it enters the net (tip R2.10: visualise exactly what goes into the network).

:func:`describe_batch` lists every tensor field of a batch with its shape, dtype and value range;
:func:`log_first_batch` prints that list once (rank zero) and logs the inputs under the key
``tips/first_batch``: a figure of captioned samples (up to 32, ``#i · label y``, one shared value
range on a colour bar, stated in the caption too, with the labels; :func:`render_first_batch`) for image-like inputs — ``(N, C, H, W)`` with ``C`` in {1, 3}, or ``(N, H, W)``,
floating point or uint8, ``H, W >= 4`` — and a table (first 16 rows, first 20 columns, plus the label)
otherwise. :class:`FirstBatchView` calls it once per fit, on the batch the training loop hands over
at step 0; :class:`~lightning_tips.preflight.Preflight` (and so ``Recipe``) composes that view
next to its data checks.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from lightning_tips._batch import split_batch, unpacked
from lightning_tips._callback import TipCallback
from lightning_tips._console import render_table
from lightning_tips._loggers import log_image, log_table, log_text
from lightning_tips._render import figure_to_array, new_figure
from lightning_tips._utils import first_tensor, named_tensors
from lightning_tips._validate import check_str

__all__ = [
    "FIELD_COLUMNS",
    "FirstBatchView",
    "describe_batch",
    "is_image_like",
    "log_first_batch",
    "render_first_batch",
]

FIELD_COLUMNS = ["field", "shape", "dtype", "min", "max"]
KEY = "tips/first_batch"
MAX_IMAGES = 32
MAX_ROWS = 16
MAX_COLUMNS = 20


def describe_batch(batch: Any) -> list[tuple[str, tuple[int, ...], str, float, float]]:
    """``(field, shape, dtype, min, max)`` for every tensor of a (nested) batch; ``nan`` for an empty
    or complex tensor. Syncs once per field with the device: call it once, not per step.

    Example:
        >>> describe_batch((torch.tensor([[0.5, -1.0]]), torch.tensor([3])))
        [('batch[0]', (1, 2), 'float32', -1.0, 0.5), ('batch[1]', (1,), 'int64', 3.0, 3.0)]
    """
    rows: list[tuple[str, tuple[int, ...], str, float, float]] = []
    for name, t in named_tensors(batch):
        lo = hi = math.nan
        if t.numel() > 0 and not t.is_complex():
            v = t.detach()
            v = v.to(torch.uint8) if v.dtype == torch.bool else v
            lo, hi = (float(a) for a in torch.stack([v.min(), v.max()]).float().cpu().tolist())
        rows.append((name, tuple(int(s) for s in t.shape), str(t.dtype).removeprefix("torch."), lo, hi))
    return rows


def is_image_like(x: torch.Tensor) -> bool:
    """``(N, C, H, W)`` with ``C`` in {1, 3}, or ``(N, H, W)``; floating point or uint8; ``H, W >= 4``.

    Example:
        >>> is_image_like(torch.zeros(2, 1, 8, 8)), is_image_like(torch.zeros(2, 30)), is_image_like(torch.zeros(2, 5, 8, 8))
        (True, False, False)
    """
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        return False
    if x.dim() == 4 and x.shape[1] in (1, 3):
        return x.shape[2] >= 4 and x.shape[3] >= 4
    return x.dim() == 3 and x.shape[1] >= 4 and x.shape[2] >= 4


def render_first_batch(images: torch.Tensor, labels: list[Any] | None = None,
                       total: int | None = None) -> tuple[np.ndarray, float, float]:
    """The first batch as a figure: the samples tiled on one canvas (cheap: one image, not one axes
    per sample), each captioned ``#3 · label 7``, one shared value range shown by a colour bar
    (single-channel images, grey) and stated in the title, about 1.2 inches a sample: readable at any
    batch size up to 32. Returns ``(HxWx3 uint8, vmin, vmax)``.

    Example:
        >>> arr, lo, hi = render_first_batch(torch.rand(4, 1, 8, 8), [0, 1, 2, 3])
        >>> arr.dtype, arr.shape[0] >= 250 and arr.shape[1] >= 250
        (dtype('uint8'), True)
    """
    arr = images.detach().float().cpu().numpy()
    if arr.ndim == 3:
        arr = arr[:, None]
    rgb = arr.shape[1] == 3
    if not rgb:
        arr = arr[:, :1]
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    n, _, h, w = arr.shape
    ncols = max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    pad_x, pad_y = max(1, w // 6), max(2, h // 2)  # room between tiles; a caption band above each row
    canvas = np.full((nrows * (h + pad_y), ncols * (w + pad_x), 3), np.nan)
    span = hi - lo if hi > lo else 1.0
    for i in range(n):
        r, c = divmod(i, ncols)
        y, x = r * (h + pad_y) + pad_y, c * (w + pad_x)
        canvas[y : y + h, x : x + w] = np.transpose(arr[i], (1, 2, 0)) if rgb else arr[i, 0][..., None]
    panel = 1.2
    fig = new_figure(max(4.5, panel * ncols + 1.0), panel * nrows * (h + pad_y) / (w + pad_x) + 0.9)
    ax = fig.add_axes((0.02, 0.02, 0.84 if not rgb else 0.96, 1 - 0.8 / fig.get_figheight()))
    if rgb:
        rgba = np.concatenate([np.clip((canvas - lo) / span, 0, 1), np.isfinite(canvas[..., :1])], axis=2)
        ax.imshow(np.nan_to_num(rgba, nan=1.0), interpolation="nearest")
        shown = None
    else:
        shown = ax.imshow(np.ma.masked_invalid(canvas[..., 0]), cmap="gray", vmin=lo, vmax=hi,
                          interpolation="nearest")
    for i in range(n):
        r, c = divmod(i, ncols)
        ax.text(c * (w + pad_x) + w / 2, r * (h + pad_y) + pad_y * 0.9 - 0.5,
                f"#{i}" + (f" · label {labels[i]}" if labels is not None else ""), ha="center", va="bottom",
                fontsize=8)
    ax.set_axis_off()
    of = f"{n} of {total}" if total is not None and total != n else f"{n}"
    fig.suptitle(f"first batch as it enters the net\n{of} samples of shape {tuple(images.shape[1:])}, "
                 f"values in [{lo:.4g}, {hi:.4g}]", fontsize=9)
    if shown is not None:
        cax = fig.add_axes((0.88, 0.1, 0.025, 0.7))
        fig.colorbar(shown, cax=cax).ax.tick_params(labelsize=7)
    return figure_to_array(fig), lo, hi


def _labels(targets: torch.Tensor | None, n: int, k: int) -> list[Any] | None:
    if targets is None or targets.dim() == 0 or targets.shape[0] != n or targets[0].numel() != 1:
        return None
    vals = targets[:k].detach().reshape(k).cpu()
    if vals.is_floating_point():
        return [float(f"{v:.4g}") for v in vals.float().tolist()]
    return [int(v) for v in vals.tolist()]


def _cell(v: float, integral: bool) -> Any:
    return int(v) if integral else float(f"{v:.4g}")


def log_first_batch(trainer: pl.Trainer, batch: Any, step: int | None = None, input_key: str | None = None,
                    target_key: str | None = None) -> str | None:
    """Print the batch's fields once and log its inputs under ``tips/first_batch`` (rank zero only).

    Returns ``None`` when done, or the reason the inputs could not be drawn (the caller reports a
    ``view-skipped`` finding; the reason is the same on every rank).
    """
    rows_of = unpacked(batch)  # a PackedSequence is drawn as its padded (N, T, F) tensor
    split = split_batch(rows_of, input_key, target_key)
    inputs, targets = split if split is not None else (rows_of, None)
    x = inputs if isinstance(inputs, torch.Tensor) else first_tensor(inputs)
    if x is None:
        x, targets = first_tensor(rows_of), None
    if x is None:
        return "the batch holds no tensor"
    if not trainer.is_global_zero:
        return None
    rows = [[f, str(list(shape)), dt, f"{lo:.4g}", f"{hi:.4g}"] for f, shape, dt, lo, hi in describe_batch(batch)]
    title = "lightning_tips first batch"
    print(render_table(title, FIELD_COLUMNS, rows), flush=True)
    log_text(trainer, f"{KEY}_fields", render_table(title, FIELD_COLUMNS, rows, color=False), step=step)
    if x.dim() == 0 or x.numel() == 0:
        return None
    n = int(x.shape[0])
    if is_image_like(x):
        k = min(n, MAX_IMAGES)
        images = x[:k].detach().float().cpu()
        labels = _labels(targets, n, k)
        picture, lo, hi = render_first_batch(images, labels, n)
        caption = f"first batch as it enters the net: {k} of {n} samples, values in [{lo:.4g}, {hi:.4g}]"
        if labels is not None:
            caption += "; labels: " + " ".join(str(v) for v in labels)
        log_image(trainer, KEY, picture, step=step, caption=caption)
        return None
    k = min(n, MAX_ROWS)
    integral = not (x.is_floating_point() or x.is_complex())
    vals = x[:k].detach().reshape(k, -1)[:, :MAX_COLUMNS]
    vals = vals.real if vals.is_complex() else vals
    table = vals.cpu().double().tolist() if integral else vals.cpu().float().tolist()
    width = int(x[0].numel())
    columns = [f"x{j}" for j in range(min(width, MAX_COLUMNS))]
    labels = _labels(targets, n, k)
    rows_out: list[list[Any]] = [[_cell(v, integral) for v in r] for r in table]
    if labels is not None:
        columns.append("label")
        rows_out = [[*r, lab] for r, lab in zip(rows_out, labels)]
    log_table(trainer, KEY, columns, rows_out, step=step)
    return None


class FirstBatchView(TipCallback):
    """The first batch as it enters the net (tip R2.10): its fields, shapes, dtypes and ranges printed
    once, and its inputs logged under ``tips/first_batch`` (captioned image panels or a table; see
    :func:`log_first_batch`).

    Drawn from the batch the training loop hands over at step 0 (``batch_idx`` 0, ``global_step`` 0),
    once per fit, not when the fit resumes from a checkpoint. Reports ``view-skipped`` (a skipped
    ``info``) when the batch cannot be drawn (no tensor in it). Observes only: it reads the batch the
    loop already has, and reads no loader.

    Args:
        input_key: the batch dict's key holding the model's input (e.g. ``"pixels"``) when it is not
            one of the recognised keys (see :data:`lightning_tips._batch.LAYOUTS`); for a tuple batch,
            its position (``"0"``).
        target_key: the batch dict's key holding the targets (e.g. ``"cls"``), shown as the labels;
            for a tuple batch, its position (``"1"``).

    Example:
        >>> from lightning_tips.views.first_batch import FirstBatchView
        >>> view = FirstBatchView(input_key="pixels")
        >>> view.input_key, view.target_key
        ('pixels', None)
    """

    def __init__(self, input_key: str | None = None, target_key: str | None = None) -> None:
        super().__init__()
        self.input_key = check_str("input_key", input_key, optional=True)
        self.target_key = check_str("target_key", target_key, optional=True)
        self._drawn = False  # drawn (or skipped) this fit

    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drawn = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._drawn or batch_idx != 0 or trainer.global_step != 0 or trainer.ckpt_path is not None:
            return
        self._drawn = True
        reason = log_first_batch(trainer, batch, input_key=self.input_key, target_key=self.target_key)
        if reason is not None:  # the same on every rank
            self.report(trainer, "view-skipped", "info", f"first batch view: {reason}", module="first_batch",
                        skipped=True)

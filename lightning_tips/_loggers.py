"""The one logger adapter: scalars, images, histograms, tables and text to W&B, TensorBoard or files.

Every view and :func:`lightning_tips._report.report` log through the functions here; no other
module branches on the logger type. Each function is a no-op off rank zero.

- :class:`~lightning.pytorch.loggers.WandbLogger`: ``wandb.Image``, ``wandb.Histogram``,
  ``wandb.Table``; finding counts go to the run summary.
- :class:`~lightning.pytorch.loggers.TensorBoardLogger`: ``add_image``, ``add_histogram``,
  ``add_text`` (tables as markdown).
- ``fast_dev_run`` (Lightning's ``DummyLogger``): nothing — Lightning suppresses logging, so does the pack.
- :class:`~lightning.pytorch.loggers.CSVLogger`, no logger, or a logger this adapter does not know
  (said once): files under ``<run dir>/tips/`` — PNG images, CSV histograms/tables, text files.
  The run dir is the logger's ``log_dir`` or, with no logger, ``trainer.default_root_dir``.
"""

from __future__ import annotations

import csv
import math
import re
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities import rank_zero_warn

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as pl

    from lightning_tips.findings import Finding

__all__ = [
    "files_dir",
    "log_finding",
    "log_histogram",
    "log_image",
    "log_scalars",
    "log_table",
    "log_text",
    "require",
]

FINDING_COLUMNS = ["code", "severity", "skipped", "step", "module", "message", "advice"]


def _finding_row(finding: Finding) -> list[Any]:
    """A finding as a table row; the ``skipped`` column marks a check that could not apply."""
    d = finding.to_dict()
    d["skipped"] = "skipped" if finding.skipped else ""
    return [d[c] for c in FINDING_COLUMNS]
_EXTRAS = {"wandb": "wandb", "tensorboard": "tensorboard", "optuna": "optuna"}
_warned_unknown: set[str] = set()


def require(module: str) -> Any:
    """Import an optional dependency or raise a ``ModuleNotFoundError`` naming the pip extra.

    Example:
        >>> require("numpy").__name__
        'numpy'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:  # also covers sys.modules[name] = None
        extra = _EXTRAS.get(module, module)
        raise ModuleNotFoundError(
            f"lightning_tips needs `{module}` for this: pip install 'lightning-tips[{extra}]'",
            name=module,
        ) from None


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")


def _rows_to_str(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [[v if isinstance(v, (int, float, str)) or v is None else str(v) for v in r] for r in rows]


class _Sink(Protocol):
    def image(self, key: str, image: np.ndarray, step: int, caption: str | None) -> None: ...
    def histogram(self, key: str, values: np.ndarray, step: int) -> None: ...
    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...
    def text(self, key: str, text: str, step: int) -> None: ...
    def finding(self, finding: Finding) -> None: ...


class _WandbSink:
    # the cumulative findings table per logger: a wandb.Table is immutable once logged
    _findings: weakref.WeakKeyDictionary[Logger, list[list[Any]]] = weakref.WeakKeyDictionary()

    def __init__(self, logger: WandbLogger) -> None:
        self.logger = logger

    def image(self, key: str, image: np.ndarray, step: int, caption: str | None) -> None:
        kwargs = {"caption": [caption]} if caption else {}
        self.logger.log_image(key=key, images=[image], step=step, **kwargs)

    def histogram(self, key: str, values: np.ndarray, step: int) -> None:
        wandb = require("wandb")
        self.logger.experiment.log({key: wandb.Histogram(values), "trainer/global_step": step})

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.logger.log_table(key=key, columns=columns, data=_rows_to_str(rows), step=step)

    def text(self, key: str, text: str, step: int) -> None:
        self.logger.log_text(key=key, columns=["text"], data=[[text]], step=step)

    def finding(self, finding: Finding) -> None:
        rows = self._findings.setdefault(self.logger, [])
        rows.append(_finding_row(finding))
        self.table("tips/findings", FINDING_COLUMNS, rows, finding.step or 0)
        summary = self.logger.experiment.summary
        key = f"tips/findings/{finding.code}"
        summary[key] = int(summary.get(key, 0) or 0) + 1


class _TensorBoardSink:
    def __init__(self, logger: TensorBoardLogger) -> None:
        self.writer = logger.experiment

    def image(self, key: str, image: np.ndarray, step: int, caption: str | None) -> None:
        self.writer.add_image(key, image if image.ndim == 3 else image[..., None], step, dataformats="HWC")
        if caption:
            self.writer.add_text(f"{key}/caption", caption, step)

    def histogram(self, key: str, values: np.ndarray, step: int) -> None:
        self.writer.add_histogram(key, values, step)

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        body = "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in rows)
        self.writer.add_text(key, head + body, step)

    def text(self, key: str, text: str, step: int) -> None:
        self.writer.add_text(key, f"```\n{text}\n```", step)

    def finding(self, finding: Finding) -> None:
        self.writer.add_text(f"tips/findings/{finding.code}", finding.format(), finding.step or 0)


class _FileSink:
    def __init__(self, root: Path) -> None:
        self.root = root / "tips"

    def _path(self, name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / name

    def _append_csv(self, name: str, header: list[str], rows: list[list[Any]]) -> None:
        path = self._path(name)
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerows(rows)

    def image(self, key: str, image: np.ndarray, step: int, caption: str | None) -> None:
        from PIL import Image

        Image.fromarray(image).save(self._path(f"{_safe(key)}_step{step:07d}.png"))
        if caption:
            self._path(f"{_safe(key)}_step{step:07d}.txt").write_text(caption + "\n")

    def histogram(self, key: str, values: np.ndarray, step: int) -> None:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return
        counts, edges = np.histogram(finite, bins=64)
        rows = [[step, float(lo), float(hi), int(c)] for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
        self._append_csv(f"{_safe(key)}_histogram.csv", ["step", "low", "high", "count"], rows)

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self._append_csv(f"{_safe(key)}.csv", ["step", *columns], [[step, *r] for r in rows])

    def text(self, key: str, text: str, step: int) -> None:
        with self._path(f"{_safe(key)}.txt").open("a") as f:
            f.write(f"# step {step}\n{text}\n")

    def finding(self, finding: Finding) -> None:
        self._append_csv("findings.csv", FINDING_COLUMNS, [_finding_row(finding)])

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        self._append_csv("scalars.csv", ["step", "key", "value"], [[step, k, v] for k, v in metrics.items()])


def files_dir(trainer: pl.Trainer) -> Path:
    """Where file views of this run land: ``<logger log_dir or default_root_dir>/tips``."""
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if isinstance(log_dir, str):
            return Path(log_dir) / "tips"
    return Path(trainer.default_root_dir) / "tips"


def _sinks(trainer: pl.Trainer) -> list[_Sink]:
    sinks: list[_Sink] = []
    file_roots: set[Path] = set()
    if getattr(trainer, "fast_dev_run", False):  # Lightning suppresses logging there: so does the pack
        return sinks

    def add_files(root: Path) -> None:
        if root not in file_roots:
            file_roots.add(root)
            sinks.append(_FileSink(root))

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            sinks.append(_WandbSink(logger))
        elif isinstance(logger, TensorBoardLogger):
            sinks.append(_TensorBoardSink(logger))
        elif isinstance(logger, CSVLogger):
            add_files(Path(logger.log_dir))
        elif isinstance(logger, DummyLogger):  # logging suppressed (fast_dev_run): write nothing, say nothing
            continue
        else:
            name = type(logger).__name__
            if name not in _warned_unknown:
                _warned_unknown.add(name)
                rank_zero_warn(
                    f"lightning_tips does not know how to log images, histograms and tables to a "
                    f"`{name}`; it writes them as files under {files_dir(trainer)} instead."
                )
            add_files(files_dir(trainer).parent)
    if not trainer.loggers:
        add_files(Path(trainer.default_root_dir))
    return sinks


def _to_uint8_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """HWC/HW uint8. Floats must already be in [0, 1] (W&B saves floats as black PNGs)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Scalars to every logger (``log_metrics``), or ``tips/scalars.csv`` with no logger."""
    if not trainer.is_global_zero or not metrics:
        return
    step = trainer.global_step if step is None else step
    clean = {k: float(v) for k, v in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(clean, step)
    if not trainer.loggers:
        _FileSink(Path(trainer.default_root_dir)).scalars(clean, step)


def log_image(
    trainer: pl.Trainer,
    key: str,
    image: np.ndarray | torch.Tensor,
    step: int | None = None,
    caption: str | None = None,
) -> None:
    """An HWC (or HW) image: uint8, or float in [0, 1]."""
    if not trainer.is_global_zero:
        return
    arr = _to_uint8_image(image)
    step = trainer.global_step if step is None else step
    for sink in _sinks(trainer):
        sink.image(key, arr, step, caption)


def log_histogram(trainer: pl.Trainer, key: str, values: torch.Tensor | np.ndarray, step: int | None = None) -> None:
    """A histogram of ``values`` (moved to the CPU here, so call it on sampled steps only)."""
    if not trainer.is_global_zero:
        return
    if isinstance(values, torch.Tensor):
        values = values.detach().float().flatten().cpu().numpy()
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).any():
        return
    step = trainer.global_step if step is None else step
    for sink in _sinks(trainer):
        sink.histogram(key, values[np.isfinite(values)], step)


def log_table(
    trainer: pl.Trainer, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None
) -> None:
    """A table: ``wandb.Table``, a markdown text in TensorBoard, a CSV file otherwise."""
    if not trainer.is_global_zero:
        return
    step = trainer.global_step if step is None else step
    clean = [[None if isinstance(v, float) and math.isnan(v) else v for v in r] for r in rows]
    for sink in _sinks(trainer):
        sink.table(key, list(columns), clean, step)


def log_text(trainer: pl.Trainer, key: str, text: str, step: int | None = None) -> None:
    """A block of text (the report card, the summary)."""
    if not trainer.is_global_zero:
        return
    step = trainer.global_step if step is None else step
    for sink in _sinks(trainer):
        sink.text(key, text, step)


def log_finding(trainer: pl.Trainer, finding: Finding) -> None:
    """One finding: a row of the W&B findings table (and a summary count), TB text, or findings.csv."""
    if not trainer.is_global_zero:
        return
    for sink in _sinks(trainer):
        sink.finding(finding)

"""Snapshot ensembles: average the predictions of the last k checkpoints of one run (R6.1, T19).

The recipe's "ensembles give ~2%" does not need k separate trainings: the weights at the last few
validation checks of one run already disagree enough to help (T19: "checkpoints from different
iterations"). :class:`SnapshotEnsemble` keeps those snapshots (on the CPU, or as files) and, after
each validation, measures the averaged prediction on the validation data next to the single
model's — on a copy of the model, under ``torch.no_grad()`` and with every RNG restored, so the
real model, its train/eval mode and the training run are untouched.

:func:`evaluate_snapshots` is the pure function: softmax average for classification (accuracy),
sigmoid average for a single logit with integer targets (accuracy), plain mean for regression
(mean squared error).

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 3)
    >>> snaps = [{k: v.clone() for k, v in net.state_dict().items()}]
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(1.0)
    >>> snaps.append({k: v.clone() for k, v in net.state_dict().items()})
    >>> x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    >>> result = evaluate_snapshots(net, snaps, lambda: [(x, y)])
    >>> result.kind, result.samples, 0.0 <= result.ensemble <= 1.0
    ('classification', 8, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_tips import _ddp
from lightning_tips._batch import call_forward
from lightning_tips._callback import TipCallback
from lightning_tips._loggers import files_dir, log_scalars
from lightning_tips._utils import any_rank, apply_to_tensors, model_copy, preserved_rng, split_batch
from lightning_tips._validate import check_bool, check_int

__all__ = ["EnsembleResult", "SnapshotEnsemble", "evaluate_snapshots"]


@dataclass(frozen=True)
class EnsembleResult:
    """The validation metric of the averaged snapshots and of the single (latest) one.

    ``kind`` is ``"classification"`` (metric: accuracy, higher is better) or ``"regression"``
    (metric: mean squared error, lower is better); ``samples`` is how many were evaluated.
    """

    kind: str
    ensemble: float
    single: float
    samples: int

    @property
    def metric(self) -> str:
        return "acc" if self.kind == "classification" else "mse"


def _kind(out: Tensor, y: Tensor) -> str:
    integer_targets = not (y.is_floating_point() or y.is_complex())
    if integer_targets and out.dim() == 2 and out.shape[1] > 1 and y.dim() == 1:
        return "softmax"
    if integer_targets and out.squeeze(-1).shape == y.shape and (out.dim() == 1 or out.shape[-1] == 1):
        return "sigmoid"
    return "mean"


def _prob(out: Tensor, kind: str) -> Tensor:
    out = out.float()
    if kind == "softmax":
        return out.softmax(dim=1)
    if kind == "sigmoid":
        return out.squeeze(-1).sigmoid() if out.dim() > 1 else out.sigmoid()
    return out


def _score(pred: Tensor, y: Tensor, kind: str) -> Tensor:
    """Summed per-sample score: correct predictions, or squared error (per sample, averaged over features)."""
    if kind == "softmax":
        return (pred.argmax(dim=1) == y).sum().float()
    if kind == "sigmoid":
        return ((pred > 0.5).to(y.dtype) == y).sum().float()
    target = y.float().reshape(pred.shape) if y.numel() == pred.numel() else y.float()
    err = (pred - target) ** 2
    return err.reshape(err.shape[0], -1).mean(dim=1).sum() if err.dim() > 0 else err


def evaluate_snapshots(
    model: nn.Module,
    snapshots: Sequence[Mapping[str, Tensor]],
    batches: Callable[[], Iterable[Any]],
    max_batches: int | None = None,
    device: torch.device | None = None,
    forward_context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> EnsembleResult | str:
    """Evaluate the average of ``snapshots`` (state dicts of ``model``) and the last one alone.

    ``model`` is loaded with each snapshot in turn (pass a copy: its weights and mode change);
    ``batches()`` must yield the same ``(inputs, targets)`` batches each time it is called (it is
    called once per snapshot, each time with the RNG restored, so a shuffled loader repeats its
    order). Returns an :class:`EnsembleResult`, or a reason string when the evaluation cannot
    apply (batches not ``(inputs, targets)``, outputs not tensors, shapes that do not match).
    Syncs with the device once, at the end.
    """
    if not snapshots:
        return "no snapshots"
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    ens: list[Tensor] = []  # per batch: the running sum of the snapshots' probabilities / outputs
    single: list[Tensor] = []
    targets: list[Tensor] = []
    kind = ""
    model.eval()
    with torch.no_grad():
        for s, state in enumerate(snapshots):
            model.load_state_dict(state)
            with preserved_rng([device]):
                for b, batch in enumerate(batches()):
                    if max_batches is not None and b >= max_batches:
                        break
                    split = split_batch(batch)
                    if split is None:
                        return f"the validation batches are a {type(batch).__name__}, not (inputs, targets)"
                    x, y = apply_to_tensors(split, lambda t: t.to(device))
                    with forward_context():
                        out = call_forward(model, x)  # forward(**x) for a Hugging Face-style dict batch
                    if not isinstance(out, Tensor):
                        return f"the model returns a {type(out).__name__}, not a tensor"
                    if s == 0:
                        kind = kind or _kind(out, y)
                        targets.append(y)
                        ens.append(_prob(out, kind))
                    else:
                        if b >= len(ens) or not torch.equal(targets[b], y):
                            return "the validation loader does not yield the same batches on every pass"
                        prob = _prob(out, kind)
                        if prob.shape != ens[b].shape:
                            return f"output shapes differ between snapshots ({tuple(prob.shape)})"
                        ens[b] = ens[b] + prob
                    if s == len(snapshots) - 1:
                        single.append(_prob(out, kind))
    if not targets:
        return "the validation loader yielded no batches"
    k = len(snapshots)
    try:
        scores = torch.stack(
            [
                torch.stack([_score(e / k, y, kind) for e, y in zip(ens, targets)]).sum(),
                torch.stack([_score(p, y, kind) for p, y in zip(single, targets)]).sum(),
            ]
        )
    except RuntimeError as err:  # e.g. regression outputs and targets that do not broadcast
        return f"outputs and targets do not match ({err})"
    n = sum(int(y.shape[0]) if y.dim() else 1 for y in targets)
    e, s1 = (scores / n).tolist()
    return EnsembleResult("classification" if kind in ("softmax", "sigmoid") else "regression", e, s1, n)


class SnapshotEnsemble(TipCallback):
    """Keep the last ``k`` validation snapshots and report how their averaged predictions score (R6.1, T19).

    A fix in the sense that it only runs when added (it never changes the model or the training).
    At the end of each validation during fit, on epochs that are a multiple of ``every_n_epochs``, it
    keeps a copy of the module's weights (CPU memory, or a file under ``<run dir>/tips/snapshots``
    with ``on_disk``), keeping the last ``k``. Once two or more exist it evaluates, on a copy of the
    model under ``torch.no_grad()`` and with the RNG restored, the average of the snapshots'
    predictions on the validation loader (at most ``max_batches`` batches, default: as many as the
    validation uses) — softmax average and accuracy for classification, mean and MSE for
    regression — next to the latest snapshot alone. Counts are summed across ranks under DDP.

    Findings: ``snapshot-ensemble`` (info) with ``ensemble``, ``single``, ``gain``, ``snapshots``,
    ``samples``; scalars ``tips/ensemble_val_acc`` and ``tips/single_val_acc`` (``..._val_mse`` for
    regression). ``info`` ``snapshot-ensemble`` skips, once: batches that are not
    ``(inputs, targets)``, outputs that are not tensors, no validation loader.

    State: the snapshots (CPU weights — the checkpoint grows by ``k`` model sizes — or, ``on_disk``,
    their file paths) and the last result.

    Args:
        k: how many snapshots to keep and average.
        every_n_epochs: take a snapshot at validations of every n-th epoch.
        on_disk: keep snapshots as files under the run directory instead of in CPU memory.
        max_batches: evaluate at most this many validation batches (``None``: the validation's own count).

    Example:
        >>> cb = SnapshotEnsemble(k=5, max_batches=10)
        >>> cb.k, cb.every_n_epochs, cb.on_disk, cb.state_key
        (5, 1, False, "SnapshotEnsemble{'k': 5, 'every_n_epochs': 1}")
    """

    def __init__(
        self,
        k: int = 3,
        every_n_epochs: int = 1,
        on_disk: bool = False,
        max_batches: int | None = None,
    ) -> None:
        super().__init__()
        check_int("k", k, low=2)  # an ensemble needs two snapshots
        check_int("every_n_epochs", every_n_epochs, low=1)
        check_bool("on_disk", on_disk)
        check_int("max_batches", max_batches, low=1, optional=True)
        self.k = k
        self.every_n_epochs = every_n_epochs
        self.on_disk = on_disk
        self.max_batches = max_batches
        self._snapshots: list[dict[str, Any]] = []  # {"epoch", "step", "weights" | "path"}
        self._skipped = False
        self.last_result: EnsembleResult | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(k=self.k, every_n_epochs=self.every_n_epochs)

    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshots, self._skipped, self.last_result = [], False, None

    # --- snapshots -------------------------------------------------------------------------------
    def _take(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weights = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        entry: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        if self.on_disk:
            folder = files_dir(trainer) / "snapshots"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"snapshot-rank{trainer.global_rank}-step{trainer.global_step:08d}.pt"
            torch.save(weights, path)
            entry["path"] = str(path)
        else:
            entry["weights"] = weights
        self._snapshots.append(entry)
        while len(self._snapshots) > self.k:
            old = self._snapshots.pop(0)
            if "path" in old and old["path"] != entry.get("path"):
                Path(old["path"]).unlink(missing_ok=True)

    @staticmethod
    def _weights(entry: Mapping[str, Any]) -> Mapping[str, Tensor]:
        if "weights" in entry:
            return entry["weights"]
        return torch.load(entry["path"], map_location="cpu", weights_only=True)

    # --- the evaluation ----------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # its collectives come at validation ends: uneven epochs across ranks stop here instead
        _ddp.check_in(trainer, site="SnapshotEnsemble start")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self._skipped:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        self._take(trainer, pl_module)
        if len(self._snapshots) < 2:
            return
        loader = _first_loader(trainer.val_dataloaders)
        if loader is None:
            self._skip(trainer, "no validation DataLoader")
            return
        max_batches = self.max_batches
        if max_batches is None:
            counts = trainer.num_val_batches
            if counts and counts[0] != float("inf"):
                max_batches = int(counts[0])
        shadow = model_copy(pl_module)
        convert = trainer.precision_plugin.convert_input  # as the loops do: "64-true" wants float64 inputs
        result = evaluate_snapshots(
            shadow,
            [self._weights(e) for e in self._snapshots],
            lambda: (convert(batch) for batch in loader),
            max_batches=max_batches,
            device=pl_module.device,
            forward_context=trainer.precision_plugin.forward_context,
        )
        del shadow
        failed = isinstance(result, str)
        if trainer.world_size > 1:  # every rank must agree to skip, and the figures are global
            failed = any_rank(trainer, failed)
        if failed:
            self._skip(trainer, result if isinstance(result, str) else "another rank could not evaluate")
            return
        assert isinstance(result, EnsembleResult)
        if trainer.world_size > 1:
            n = result.samples
            totals = torch.tensor([result.ensemble * n, result.single * n, float(n)])
            e, s1, n_all = _ddp.reduce(trainer, {"totals": totals}, site="SnapshotEnsemble totals")["totals"].tolist()
            result = EnsembleResult(result.kind, e / n_all, s1 / n_all, int(n_all))
        self.last_result = result
        self._report(trainer, result)

    def _report(self, trainer: pl.Trainer, r: EnsembleResult) -> None:
        log_scalars(trainer, {f"tips/ensemble_val_{r.metric}": r.ensemble, f"tips/single_val_{r.metric}": r.single})
        k = len(self._snapshots)
        epochs = f"epochs {self._snapshots[0]['epoch']}-{self._snapshots[-1]['epoch']}"
        gain = r.ensemble - r.single if r.kind == "classification" else r.single - r.ensemble
        if r.kind == "classification":
            what = f"val accuracy {r.ensemble:.4f} vs {r.single:.4f} for the single model ({100 * gain:+.2f} points)"
        else:
            what = f"val MSE {r.ensemble:.4g} vs {r.single:.4g} for the single model"
        better = "the ensemble is better: evaluate and ship it (R6.1)" if gain > 0 else "no gain from ensembling yet"
        self.report(
            trainer,
            "snapshot-ensemble",
            "info",
            f"ensemble of the last {k} snapshots ({epochs}): {what}, on {r.samples} samples",
            advice=better,
            figures={"ensemble": r.ensemble, "single": r.single, "gain": gain, "snapshots": k, "samples": r.samples},
        )

    def _skip(self, trainer: pl.Trainer, why: str) -> None:
        self._skipped = True
        self.report(trainer, "snapshot-ensemble", "info", f"snapshot ensemble skipped: {why}",
                    advice="none needed; the ensemble evaluation needs (inputs, targets) batches and tensor outputs")

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        state["snapshots"] = [dict(e) for e in self._snapshots]
        state["skipped"] = self._skipped
        r = self.last_result
        state["last_result"] = None if r is None else [r.kind, r.ensemble, r.single, r.samples]
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._snapshots = [dict(e) for e in state_dict.get("snapshots", [])][-self.k :]
        self._skipped = bool(state_dict.get("skipped", False))
        r = state_dict.get("last_result")
        self.last_result = None if r is None else EnsembleResult(str(r[0]), float(r[1]), float(r[2]), int(r[3]))


def _first_loader(loaders: Any) -> DataLoader | None:
    """The first DataLoader of ``trainer.val_dataloaders`` (a loader, a sequence or a mapping of loaders)."""
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, Sequence) and loaders and isinstance(loaders[0], DataLoader):
        return loaders[0]
    return None

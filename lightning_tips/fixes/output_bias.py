"""Output-bias init (R2.5): the untrained model predicts the data's prior.

If 90% of the labels are class 0, a freshly initialised network still predicts ~uniform
probabilities, so the first iterations are spent learning the bias (the "hockey stick" loss, R2.4).
Setting the last layer's bias to the prior removes that: softmax(b) = p (``b_c = log p_c``), a
single sigmoid logit gives p (``b = log(p / (1 - p))``), each sigmoid of a multilabel head its
label's rate, and a regression output the target mean. The loss at init is then the prior's
entropy (or the target variance for MSE) — the ``init-loss`` check's expectation.

Three ways to use it, all with the same result:

- :func:`init_output_bias_` — the pure in-place function on one layer;
- :class:`OutputBiasInitMixin` — ``self.init_output_bias(y_train)`` in a LightningModule's ``__init__``;
- :class:`OutputBiasInit` — a callback that measures the prior on the train loader at fit start.
"""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter

from lightning_tips import _ddp
from lightning_tips._batch import peek_batches, stream_reason
from lightning_tips._callback import TipCallback
from lightning_tips._utils import find_output_layer, preserved_loader_rng, split_batch
from lightning_tips._validate import check_bool, check_choice, check_float_list, check_int, check_module_path

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as pl

__all__ = ["OutputBiasInit", "OutputBiasInitMixin", "Task", "infer_task", "init_output_bias_", "target_stats"]

Task = Literal["auto", "multiclass", "binary", "multilabel", "regression"]
_TASKS: tuple[str, ...] = ("multiclass", "binary", "multilabel", "regression")
_EPS = 1e-6  # probability floor: a class never seen gets log(1e-6) ~ -13.8, not -inf
_MAX_FIGURES = 16  # prior_0 ... prior_15 in the finding's figures


def _width(layer: nn.Module) -> int | None:
    """Number of outputs of a Linear (``out_features``) or conv (``out_channels``) layer."""
    for attr in ("out_features", "out_channels"):
        value = getattr(layer, attr, None)
        if isinstance(value, int):
            return value
    return None


def _is_01(t: Tensor) -> bool:
    return bool(((t >= 0) & (t <= 1)).all())


def infer_task(targets: Tensor, width: int) -> str:
    """The task a batch of ``targets`` implies for an output layer of ``width`` outputs.

    Integer/bool targets: ``binary`` on a single output, ``multilabel`` when shaped ``(N, width, ...)``
    with 0/1 values, otherwise ``multiclass`` (class indices). Float targets: ``binary`` /
    ``multilabel`` when every value lies in [0, 1] (BCE targets, soft labels included), otherwise
    ``regression``.

    Raises:
        ValueError: the targets fit none of the tasks (e.g. float targets of the wrong shape).

    Example:
        >>> infer_task(torch.tensor([0, 3, 9]), 10), infer_task(torch.tensor([0.0, 1.0]), 1)
        ('multiclass', 'binary')
    """
    per_output = targets.dim() >= 2 and targets.shape[1] == width
    if not targets.is_floating_point():
        if width == 1:
            return "binary"
        if per_output and _is_01(targets):
            return "multilabel"
        return "multiclass"
    if width == 1 or per_output:
        if _is_01(targets):
            return "binary" if width == 1 else "multilabel"
        return "regression"
    raise ValueError(
        f"Expected class indices (integer targets) or float targets shaped (N, {width}, ...) for an output layer of "
        f"width {width} but got float targets of shape {tuple(targets.shape)}."
    )


def target_stats(targets: Tensor, width: int, task: str) -> tuple[Tensor, Tensor, int]:
    """Additive statistics of ``targets`` for one task: ``(sums, sums of squares, n)``.

    ``sums / n`` is the prior: class counts for ``multiclass`` (negative targets — an
    ``ignore_index`` such as -100 — are left out), positives per output for ``binary``/``multilabel``,
    target sums per output for ``regression``. Being sums, they add up over batches and over DDP ranks.

    Raises:
        ValueError: the targets are not valid for ``task`` and ``width``.
    """
    if task == "multiclass":
        if targets.is_floating_point() or targets.is_complex():
            raise ValueError(
                f"Expected integer class indices for a multiclass output of width {width} but got {targets.dtype} "
                "targets. Pass task='regression' (or 'multilabel'/'binary' for 0/1 targets) if that is the task."
            )
        flat = targets.reshape(-1).long()
        flat = flat[flat >= 0]
        if flat.numel() and int(flat.max()) >= width:
            raise ValueError(
                f"Expected class indices in [0, {width}) for an output layer of width {width} but got a target "
                f"{int(flat.max())}: the output layer does not have one output per class."
            )
        counts = torch.bincount(flat, minlength=width).float()
        return counts, torch.zeros_like(counts), int(flat.numel())
    t = targets.float()
    if task == "binary" and width != 1:
        raise ValueError(f"Expected a single-output layer for a binary task but got width {width}.")
    if task in ("binary", "multilabel") and not _is_01(t):
        raise ValueError(f"Expected {task} targets in [0, 1] but got values in [{float(t.min())}, {float(t.max())}].")
    if width == 1:
        t = t.reshape(-1, 1)
    elif t.dim() < 2 or t.shape[1] != width:
        raise ValueError(
            f"Expected {task} targets shaped (N, {width}, ...) for an output layer of width {width} but got "
            f"{tuple(targets.shape)}."
        )
    t = t.transpose(0, 1).reshape(width, -1)  # (width, N * ...)
    return t.sum(1), (t * t).sum(1), int(t.shape[1])


def _bias_from_stats(task: str, sums: Tensor, n: int, center: bool = False) -> tuple[Tensor, Tensor]:
    """``(bias, prior)`` from :func:`target_stats` (the formulas of R2.5)."""
    if n <= 0:
        raise ValueError("Expected at least one target to measure the prior from but got none.")
    prior = sums.float() / n
    if task == "multiclass":
        p = prior.clamp_min(_EPS)
        p = p / p.sum()
        bias = p.log()  # softmax(log p) = p
        if center:
            bias = bias - bias.mean()  # softmax is shift-invariant
        return bias, p
    if task in ("binary", "multilabel"):
        p = prior.clamp(_EPS, 1 - _EPS)
        return p.log() - (-p).log1p(), p  # sigmoid(log(p / (1 - p))) = p
    return prior, prior  # regression: the target mean


def _stats_of(targets_or_counts: Tensor, width: int, task: str) -> tuple[str, Tensor, int]:
    """Resolve ``task`` and return ``(task, sums, n)`` for targets, or for per-class counts/probabilities."""
    t = torch.as_tensor(targets_or_counts)
    is_counts = t.is_floating_point() and t.dim() == 1 and width >= 2 and len(t) == width
    if is_counts and task in ("auto", "multiclass"):
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or float(t.sum()) <= 0:
            raise ValueError(f"Expected non-negative class counts with a positive sum but got {t.tolist()}.")
        total = float(t.sum())
        # scale probabilities to pseudo-counts; the prior only depends on the ratios
        scale = 1.0 if total >= 1.5 else 1e6 / total
        return "multiclass", t.float() * scale, max(1, round(total * scale))
    if task == "auto":
        task = infer_task(t, width)
    sums, _, n = target_stats(t, width, task)
    return task, sums, n


def init_output_bias_(layer: nn.Module, targets_or_counts: Tensor, task: str = "auto", center: bool = False) -> Tensor:
    """Set ``layer.bias`` in place so the untrained model predicts the prior; return the bias.

    ``b_c = log p_c`` (softmax), ``b = log(p / (1 - p))`` (sigmoid, per label), ``b = mean(y)`` (regression) (R2.5).

    Args:
        layer: the output layer (``nn.Linear``, or a conv with ``out_channels`` outputs) with a bias.
        targets_or_counts: the training targets — class indices (integer), 0/1 (binary/multilabel,
            ``(N, C)``), or regression targets (float, ``(N,)`` or ``(N, C)``) — or, for multiclass
            only, a float vector of ``C`` per-class counts or probabilities.
        task: ``"auto"`` infers it from the targets and the layer's width (see :func:`infer_task`).
        center: subtract the mean of the log prior (multiclass; softmax is unchanged).

    Raises:
        ValueError: no bias, unknown width, or targets that do not fit the task.

    Example:
        >>> layer = nn.Linear(4, 3)
        >>> bias = init_output_bias_(layer, torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2]))
        >>> [round(p, 4) for p in torch.softmax(layer.bias, 0).tolist()]  # the prior 6:2:2
        [0.6, 0.2, 0.2]
    """
    if task not in ("auto", *_TASKS):
        raise ValueError(f"Expected task to be one of 'auto', {', '.join(map(repr, _TASKS))} but got {task!r}.")
    bias = getattr(layer, "bias", None)
    width = _width(layer)
    if not isinstance(bias, Tensor) or width is None:
        raise ValueError(f"Expected an output layer with a bias and a known width but got {layer!r}.")
    if isinstance(bias, UninitializedParameter):
        raise ValueError("Expected an initialised bias but the lazy layer has not run a forward pass yet.")
    task, sums, n = _stats_of(targets_or_counts, width, task)
    new, _ = _bias_from_stats(task, sums, n, center)
    with torch.no_grad():
        bias.copy_(new.to(device=bias.device, dtype=bias.dtype))
    return bias.detach().clone()


def _entropy(task: str, prior: Tensor) -> float:
    """The expected loss at init with this bias and zero weights: the prior's entropy (mean over labels)."""
    p = prior.double().cpu()
    if task == "multiclass":
        return float(-(p * p.log()).sum())
    return float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())


class OutputBiasInitMixin:
    """A LightningModule mixin: ``self.init_output_bias(y_train)`` sets the output bias to the prior (R2.5).

    Call it in ``__init__`` after building the layers (or in ``setup``): a run resumed from a
    checkpoint then loads the checkpoint's bias over it, so the fix never re-applies on resume.

    Example:
        >>> import lightning.pytorch as pl
        >>> class Net(OutputBiasInitMixin, pl.LightningModule):
        ...     def __init__(self, y_train):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        ...         self.init_output_bias(y_train)
        >>> net = Net(torch.tensor([0, 0, 0, 1]))
        >>> [round(p, 2) for p in torch.softmax(net.net[2].bias, 0).tolist()]
        [0.75, 0.25]
    """

    def init_output_bias(
        self, targets_or_counts: Tensor, task: str = "auto", layer: str | None = None, center: bool = False
    ) -> Tensor:
        """Set the output layer's bias (``layer`` or the last Linear/1x1 conv) to the prior; return it.

        Raises:
            ValueError: no output layer with a bias, or targets that do not fit (see :func:`init_output_bias_`).
        """
        assert isinstance(self, nn.Module)
        found = find_output_layer(self, layer)
        if found is None:
            raise ValueError(f"Expected an nn.Linear or 1x1 conv output layer in {type(self).__name__} but found none.")
        return init_output_bias_(found[1], targets_or_counts, task, center)


class OutputBiasInit(TipCallback):
    """Fix R2.5: at fit start, set the output layer's bias so the untrained model predicts the prior.

    At ``on_train_start`` (the train loader exists then) the callback finds the output layer (the
    last ``nn.Linear``/``LazyLinear``/1x1 conv, or ``layer``), measures the prior on up to
    ``max_batches`` batches of the train loader (targets via ``split_batch``; counts summed across
    DDP ranks) unless ``prior`` is given, and applies :func:`init_output_bias_`. The prior is the one
    of the batches the model will see: with :func:`~lightning_tips.fixes.sampler.balanced_sampler`
    it is ~uniform. The scan restores every RNG it touches (global and the loader's generators).
    Nothing happens when the fit resumes from a checkpoint (``trainer.ckpt_path`` set): the
    checkpoint's bias stays.

    Reports ``output-bias`` (info) with the prior applied (``prior_<c>``, ``entropy`` — the loss to
    expect at init — or ``mean``/``variance`` for regression), or an ``output-bias`` info finding
    saying what was skipped and why (no linear output layer, no bias, a batch it cannot split,
    targets that are not class indices, ...). It never stops training.

    Args:
        task: ``"auto"`` infers ``multiclass``/``binary``/``multilabel``/``regression`` from the
            targets' dtype and shape and the layer's width (see :func:`infer_task`).
        prior: the prior to apply instead of measuring it: class probabilities (multiclass, the
            default with ``task="auto"`` on a layer of 2+ outputs), ``[p]`` (binary, the default on
            one output), label rates (``task="multilabel"``) or target means (``task="regression"``).
        layer: the output layer's module path (default: found with ``find_output_layer``).
        max_batches: how many train batches the scan reads at most.
        center: subtract the mean of the log prior (multiclass only).

    Example:
        >>> cb = OutputBiasInit(prior=[0.9, 0.1])
        >>> cb.prior, cb.task
        ([0.9, 0.1], 'auto')
    """

    def __init__(
        self,
        task: Task = "auto",
        prior: list[float] | None = None,
        layer: str | None = None,
        max_batches: int = 50,
        center: bool = False,
    ) -> None:
        super().__init__()
        check_choice("task", task, get_args(Task))
        probabilities = task in ("auto", "multiclass", "binary", "multilabel")
        check_float_list("prior", prior, low=0.0 if probabilities else None, high=1.0 if probabilities else None, optional=True)
        check_module_path("layer", layer, optional=True)
        check_int("max_batches", max_batches, low=1)
        check_bool("center", center)
        self.task = task
        self.prior = None if prior is None else [float(p) for p in prior]
        self.layer = layer
        self.max_batches = max_batches
        self.center = center
        self.applied_bias: list[float] | None = None  # what was applied (kept in the checkpoint)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(task=self.task, layer=self.layer)

    # --- the scan ------------------------------------------------------------------------------
    def _scan(self, loader: Any, width: int) -> tuple[str, Tensor, Tensor, int, int] | str:
        """``(task, sums, sumsq, n, batches)`` over the first ``max_batches`` batches, or why not."""
        if loader is None or not hasattr(loader, "__iter__") or isinstance(loader, (dict, list, tuple)):
            return f"the train dataloader is {type(loader).__name__}, not a single DataLoader"
        reason = stream_reason(loader)
        if reason is not None:  # reading a stream ahead would take samples from training
            return f"{reason}; pass prior=[...]"
        task: str = self.task
        sums, sumsq, n, batches = torch.zeros(width), torch.zeros(width), 0, 0
        # an independent copy of the dataset and sampler: the user's generators and stream stay untouched
        with preserved_loader_rng(loader), closing(peek_batches(loader)) as peeked:
            for batch, _ in peeked:
                if batches >= self.max_batches:
                    break
                split = split_batch(batch)
                if split is None:
                    return (
                        f"could not find the targets in a {type(batch).__name__} batch (expected (x, y) or a dict with "
                        "a 'y'/'target(s)'/'label(s)' key); pass prior=[...]"
                    )
                targets = split[1].detach().cpu()
                try:
                    if task == "auto":
                        task = infer_task(targets, width)
                    s, s2, k = target_stats(targets, width, task)
                except ValueError as err:
                    return str(err)
                sums, sumsq, n, batches = sums + s, sumsq + s2, n + k, batches + 1
        if batches == 0:
            return "the train dataloader yielded no batch"
        return task, sums, sumsq, n, batches

    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, width: int
    ) -> tuple[str, Tensor, Tensor, int, str] | str:
        """Scan and reduce across ranks; every rank takes the same decision from the reduced vector."""
        local = self._scan(trainer.train_dataloader, width)
        failed = isinstance(local, str)
        state = {
            "sums": torch.zeros(width), "sumsq": torch.zeros(width), "n": torch.zeros(()),
            "failed": torch.tensor(failed), "tasks": torch.zeros(len(_TASKS)),
        }  # fmt: skip
        if not isinstance(local, str):
            task, state["sums"], state["sumsq"], n, _ = local
            state["n"] = torch.tensor(float(n))
            state["tasks"][_TASKS.index(task)] = 1.0
        total = _ddp.reduce(trainer, state, site="OutputBiasInit targets")
        if bool(total["failed"]):
            return local if isinstance(local, str) else "the targets could not be read on another rank"
        tasks = [t for t, c in zip(_TASKS, total["tasks"].tolist()) if c > 0]
        if len(tasks) != 1:
            return f"the ranks inferred different tasks ({', '.join(tasks)}); pass task=..."
        batches = local[4] if not isinstance(local, str) else 0
        n = round(float(total["n"]))
        where = f"{n} targets in {batches} batch(es)" + (f" x {trainer.world_size} ranks" if trainer.world_size > 1 else "")
        return tasks[0], total["sums"], total["sumsq"], n, where

    # --- the hook ------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return  # resuming: the checkpoint's bias is the trained one
        try:
            found = find_output_layer(pl_module, self.layer)
        except AttributeError as err:
            self._skip(trainer, f"no module {self.layer!r} in {type(pl_module).__name__} ({err})")
            return
        if found is None:
            self._skip(trainer, f"{type(pl_module).__name__} has no nn.Linear/LazyLinear/1x1 conv output layer")
            return
        name, layer = found
        width, bias = _width(layer), getattr(layer, "bias", None)
        if width is None or not isinstance(bias, Tensor):
            self._skip(trainer, f"the output layer `{name}` ({type(layer).__name__}) has no bias", name)
            return
        if isinstance(bias, UninitializedParameter):
            self._skip(trainer, f"the lazy output layer `{name}` has not run a forward pass yet", name)
            return

        task: str
        if self.prior is not None:
            task = self.task if self.task != "auto" else ("multiclass" if width >= 2 else "binary")
            if len(self.prior) != width:
                self._skip(trainer, f"prior has {len(self.prior)} values but `{name}` has {width} outputs", name)
                return
            sums, n, where = torch.tensor(self.prior) * 1e6, 1_000_000, "the given prior"
            variance: Tensor | None = None
        else:
            measured = self._measure(trainer, pl_module, width)
            if isinstance(measured, str):
                self._skip(trainer, measured, name)
                return
            task, sums, sumsq, n, where = measured
            variance = sumsq / max(n, 1) - (sums / max(n, 1)) ** 2
        try:
            new, prior = _bias_from_stats(task, sums, n, self.center)
        except ValueError as err:
            self._skip(trainer, str(err), name)
            return
        with torch.no_grad():
            bias.copy_(new.to(device=bias.device, dtype=bias.dtype))
        self.applied_bias = new.tolist()
        self._report_applied(trainer, name, task, prior, variance, where)

    def _report_applied(
        self, trainer: pl.Trainer, name: str, task: str, prior: Tensor, variance: Tensor | None, where: str
    ) -> None:
        shown = ", ".join(f"{p:.3g}" for p in prior.tolist()[:_MAX_FIGURES]) + (", ..." if len(prior) > _MAX_FIGURES else "")
        figures: dict[str, float] = {f"prior_{i}": p for i, p in enumerate(prior.tolist()[:_MAX_FIGURES])}
        if task == "regression":
            what = f"the target mean [{shown}]"
            if variance is not None:
                figures["variance"] = float(variance.clamp_min(0).mean())
                what += f" (expected MSE at init with small weights ~ the target variance {figures['variance']:.4g})"
        else:
            figures["entropy"] = _entropy(task, prior)
            formula = "log p" if task == "multiclass" else "log(p / (1 - p))"
            what = (
                f"{formula} of the {task} prior [{shown}] (expected loss at init with small weights = the prior's "
                f"entropy {figures['entropy']:.4f})"
            )
        self.report(trainer, "output-bias", "info", f"set the bias of `{name}` to {what}, measured on {where}",
                    module=name, figures=figures)

    def _skip(self, trainer: pl.Trainer, why: str, module: str | None = None) -> None:
        self.report(trainer, "output-bias", "info", f"skipped the output-bias init: {why}",
                    advice="set the bias yourself with init_output_bias_(layer, targets) or pass prior=[...]/layer=... (R2.5)",
                    module=module, skipped=True)

    # --- state ---------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"applied_bias": self.applied_bias}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self.applied_bias = state_dict.get("applied_bias")

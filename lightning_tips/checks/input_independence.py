"""``input-independent``: the model's output must follow its input, and the labels must follow the inputs (tip R2.7).

Two failures look alike from the loss curve: a forward that ignores its input (a wrong variable,
a branch that is never taken, an input multiplied by 0) and labels that do not belong to their
inputs (shuffled apart). They need different evidence, so the check has two parts.

**Pre-flight (one batch, what one batch can prove).** On a copy (dropout off) the user's
``training_step`` is run with the real inputs and with two perturbations of them — floating inputs
zeroed, and floating inputs replaced by seeded noise of the same mean and spread (integer inputs,
e.g. token ids and masks, are permuted in both). When the model's output changes, the forward uses
its input: pass. When the output is *exactly* unchanged under both, forward hooks on every
submodule find where the input stops mattering:

- no submodule's output depends on the input → ``input-independent`` warning: the forward ignores
  its input (an exact, noise-free measurement: one batch proves it);
- submodules depend on the input but the dependence ends outside every module (the forward computes
  a body and returns something else, e.g. learned constants) → the same warning, unless filling every
  all-zero parameter with seeded noise (a zero-initialised head applied functionally,
  ``F.linear(h, self.w)``) makes the output follow the input (then silent, as below);
- a layer whose input depends on the input and whose weight is all zero (a zero-initialised head,
  e.g. torchvision's ``VisionTransformer``) explains it → pass, silent (it starts learning at
  step 1);
- a layer whose input depends on the input but whose output is all zero (every ReLU unit dead) →
  ``info``: the root cause is ``dead-activation`` (not a separate warning);
- a layer whose input depends on the input but whose output is the same non-zero value for all of
  them (saturated units, a hard step) → ``info`` naming it.

Non-finite outputs make the comparison meaningless: skipped (``info``, see ``nonfinite-*``).

**During training (the learned comparison).** A model that cannot use its inputs does no better on
validation data than the best *constant* prediction, whose loss is exact and known from the
validation labels alone: their class entropy for cross-entropy/NLL (classification only: a
regression's logged validation "loss" may be an RMSE or MAE, whose baseline is not the variance).
The check collects the validation targets and, at ``on_validation_end``, compares the smallest
validation loss seen so far (the logged metric whose name holds ``val`` and ``loss``) with that
baseline. It warns only once training has had a fair chance — at least ``steps`` training steps
and 3 validation checks, at least 30 validation samples — *and* the training loss has fallen below
``0.8 x`` the baseline (the model does fit its training data, so "it has not learned yet" is ruled
out): then validation loss ``>=`` the constant baseline means the labels do not follow from the
inputs (shuffled apart, a train/validation mismatch) or the forward barely uses them. No noise
margin is needed on that side: any model that extracts information from the inputs goes below the
exact baseline; noise only makes the check miss (the *minimum* over checks is used).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tips._utils import apply_to_tensors, first_tensor, join_batch, model_copy, named_tensors, split_batch
from lightning_tips._validate import check_int
from lightning_tips.checks._preflight import DEFAULT_BUDGET_S, CardLine, CheckSkipped, PreflightCheck, Verdict, settle
from lightning_tips.checks.output_activation import StepTrace, eval_dropout, trace_training_step

__all__ = [
    "InputIndependenceCheck",
    "constant_baseline",
    "input_independence",
    "input_independence_verdict",
    "learned_verdict",
]

CODE = "input-independent"
SAME_TOLERANCE = 1e-6  # relative: an output change below 1e-6 x its scale is "unchanged"
MIN_VAL_CHECKS = 3
MIN_VAL_SAMPLES = 30
TRAIN_FIT_RATIO = 0.8
MAX_TARGET_ELEMENTS = 1_000_000  # validation labels kept for the baseline (per-pixel labels: a sample of them)
_ZERO_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)


def _perturbed(inputs: Any, mode: str, seed: int, ints: bool = True) -> Any:
    """``inputs`` with floating tensors zeroed (``mode="zero"``) or replaced by seeded noise of their
    mean and spread (``"noise"``); integer tensors permuted (the same seed) in both, unless ``not ints``."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def fn(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            if mode == "zero":
                return torch.zeros_like(t)
            std, mean = torch.std_mean(t.detach().float()) if t.numel() > 1 else (t.new_ones(()), t.mean())
            noise = torch.randn(t.shape, generator=g).to(t.device)
            return (noise * std.clamp_min(1e-3) + mean).to(t.dtype)
        if ints and t.numel() > 1 and t.dtype != torch.bool:
            order = torch.randperm(t.numel(), generator=g).to(t.device)
            return t.flatten()[order].reshape(t.shape)
        return t

    return apply_to_tensors(inputs, fn)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    a32, b32 = a.detach().float(), b.detach().float()
    change, scale = torch.stack([(a32 - b32).abs().max(), a32.abs().max()]).tolist() if a.numel() else (0.0, 0.0)
    return bool(change <= SAME_TOLERANCE * max(scale, 1e-12))


def _traced(probe: pl.LightningModule, batch: Any, record: bool) -> tuple[StepTrace, dict[str, Any]]:
    """The trace of ``training_step`` on ``batch`` and, with ``record``, each submodule's (first input, first output)."""
    seen: dict[str, Any] = {}
    handles = []
    if record:
        for name, m in probe.named_modules():
            if name:
                def hook(_m: nn.Module, inp: Any, out: Any, _name: str = name) -> None:
                    seen.setdefault(_name, (first_tensor(inp), first_tensor(out)))

                handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            trace = trace_training_step(probe, batch)
    finally:
        for h in handles:
            h.remove()
    if isinstance(trace.loss, str):
        raise CheckSkipped(trace.loss)
    return trace, seen


def input_independence(module: pl.LightningModule, batch: Any) -> dict[str, Any]:
    """Does the model's output change when its inputs change? (the pre-flight part, see the module docstring)

    Returns ``{"ignores_input": 0/1, "explained": "" | "zero-weight" | "dead" | "lost", "layer": path,
    "dependent_layers": count, "loss": the first loss function training_step called ("" if none)}``, and
    ``"zero_filled"`` (all-zero parameters filled with noise for the last comparison) when it ignores the
    input although some layer depends on it.

    Raises:
        CheckSkipped: unlabeled batch layout, inputs that cannot be perturbed, a non-finite output.
    """
    split = split_batch(batch)
    if split is None:
        raise CheckSkipped("the batch is not (inputs, targets) or a dict with input and target keys")
    inputs, targets = split
    probe = eval_dropout(model_copy(module))
    assert isinstance(probe, pl.LightningModule)
    trace, _ = _traced(probe, batch, record=False)
    out_real = trace.output
    if out_real is None:
        raise CheckSkipped("training_step's forward returned no tensor")
    if not bool(torch.isfinite(out_real.detach()).all()):
        raise CheckSkipped("the model's output is not finite on the real batch (see the nonfinite-* findings), "
                           "so it cannot be compared")
    fig: dict[str, Any] = {"ignores_input": 0.0, "explained": "", "layer": "", "dependent_layers": 0.0,
                           "loss": trace.calls[0].name if trace.calls else ""}
    real_t = [t for _, t in named_tensors(inputs)]
    variants: list[Any] = []
    for mode, seed in (("zero", 0), ("noise", 1)):
        for ints in (True, False):  # permuted integer inputs may be invalid (sorted lengths, ...): floats only then
            changed = _perturbed(inputs, mode, seed, ints)
            if all(_same(a, b) for a, b in zip(real_t, (t for _, t in named_tensors(changed)))):
                continue  # this perturbation changed nothing: no evidence either way
            variant = join_batch(batch, changed, targets)
            try:
                out = _traced(probe, variant, record=False)[0].output
            except CheckSkipped:
                raise
            except Exception:
                continue
            variants.append(variant)
            if not _same(out_real, out):
                return fig  # the output follows the input
            break
    if not variants:
        raise CheckSkipped("the inputs could not be perturbed (constant integer inputs, or a model that rejects "
                           "permuted integer inputs)")
    # the output is exactly unchanged: where does the input stop mattering?
    _, real = _traced(probe, batch, record=True)
    _, noisy = _traced(probe, variants[-1], record=True)
    dependent: list[str] = []
    collapse: list[tuple[str, str]] = []
    for name, (inp, out) in real.items():
        other_in, other_out = noisy.get(name, (None, None))
        out_dep = out is not None and other_out is not None and not _same(out, other_out)
        in_dep = inp is not None and other_in is not None and not _same(inp, other_in)
        if out_dep:
            dependent.append(name)
        elif in_dep and out is not None and not any(True for _ in probe.get_submodule(name).children()):
            m = probe.get_submodule(name)  # a leaf layer where the dependence ends
            weight = getattr(m, "weight", None)
            if isinstance(m, _ZERO_WEIGHT_LAYERS) and isinstance(weight, torch.Tensor) and not bool(weight.any()):
                collapse.append((name, "zero-weight"))
            elif out.is_floating_point() and not bool(out.any()):
                collapse.append((name, "dead"))
            else:
                collapse.append((name, "lost"))  # a layer whose output is constant (saturated, a hard step)
    fig["dependent_layers"] = float(len(dependent))
    for kind in ("zero-weight", "dead", "lost"):
        hit = next((n for n, k in collapse if k == kind), None)
        if hit is not None:
            fig.update(explained=kind, layer=hit)
            return fig
    # no layer explains it: the dependence ends outside every module (the result computed from the input
    # is not used). Zero-initialised parameters used functionally (``F.linear(h, self.w)``) could still
    # explain it: fill them with seeded noise and compare again.
    filled = _unzero_parameters(probe)
    if filled:
        out_real = _traced(probe, batch, record=False)[0].output
        out_other = _traced(probe, variants[-1], record=False)[0].output
        if not _same(out_real, out_other):
            fig.update(explained="zero-weight", layer=filled[0])
            return fig
    fig.update(ignores_input=1.0, layer=dependent[-1] if dependent else "", zero_filled=float(len(filled)))
    return fig


def _unzero_parameters(model: nn.Module) -> list[str]:
    """Fill every all-zero floating parameter of ``model`` (a copy) with small seeded noise; their names."""
    g = torch.Generator(device="cpu").manual_seed(0)
    filled = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and p.is_floating_point() and not bool(p.any()):
                p.copy_((0.02 * torch.randn(p.shape, generator=g)).to(p.device, p.dtype))
                filled.append(name)
    return filled


def input_independence_verdict(fig: dict[str, Any]) -> Verdict:
    """The pre-flight ``input-independent`` verdict from :func:`input_independence`'s figures.

    Example:
        >>> input_independence_verdict({"ignores_input": 1.0, "explained": "", "layer": "", "dependent_layers": 0.0}).severity
        'warning'
        >>> input_independence_verdict({"ignores_input": 0.0, "explained": "zero-weight", "layer": "head",
        ...                             "dependent_layers": 3.0}).severity is None
        True
    """
    figures = {"ignores_input": float(fig["ignores_input"]), "dependent_layers": float(fig["dependent_layers"])}
    if fig["ignores_input"] and fig.get("layer"):
        filled = int(fig.get("zero_filled", 0))
        also = f", also with its {filled} all-zero parameter(s) filled with noise" if filled else ""
        return Verdict(CODE, "warning", f"the model's output is identical with zeroed and with random inputs{also}, "
                       f"although `{fig['layer']}` depends on them and no layer explains it (no zero weight, no dead "
                       "or constant units): the forward computes from its input but ignores the result (a wrong "
                       "variable returned, an unused branch)", figures, module=str(fig["layer"]))
    if fig["ignores_input"]:
        return Verdict(CODE, "warning", "the model's output is identical with zeroed and with random inputs, and no "
                       "layer's output depends on the input: the forward ignores its input", figures)
    layer = fig["explained"] and f"`{fig['layer']}`"
    if fig["explained"] == "zero-weight":
        return Verdict(CODE, None, f"output constant at init because {layer} has all-zero weights (a zero-initialised "
                       "head); the layers before it do use the input", figures, module=str(fig["layer"]))
    if fig["explained"] == "dead":
        return Verdict(CODE, "info", f"the output is identical with zeroed and random inputs because every unit of "
                       f"{layer} outputs 0 for all of them (a collapsed representation: see dead-activation, the root "
                       "cause)", figures, module=str(fig["layer"]),
                       advice="see dead-activation (the root cause): He init, smaller learning rate, check biases")
    if fig["explained"] == "lost":
        return Verdict(CODE, "info", f"the output is identical with zeroed and random inputs because {layer} gives "
                       "the same output for all of them although its input depends on them (saturated units? a "
                       "hard step? see saturated-activation)", figures, module=str(fig["layer"]))
    return Verdict(CODE, None, "the output changes with the input", figures)


# --- during training: the validation loss against the best constant prediction ---------------------


def constant_baseline(targets: torch.Tensor, loss: str) -> float | None:
    """The loss of the best constant prediction on ``targets`` (exact, no model involved): the class
    entropy for ``cross_entropy``/``nll_loss`` with class-index targets; ``None`` for anything else
    (a regression's logged validation "loss" may be an RMSE or MAE, so its baseline is not known).

    Example:
        >>> round(constant_baseline(torch.tensor([0, 1, 2, 3]), "cross_entropy"), 4)
        1.3863
        >>> constant_baseline(torch.tensor([1.0, 3.0]), "mse_loss") is None
        True
    """
    if loss in ("cross_entropy", "nll_loss") and not targets.is_floating_point():
        valid = targets[targets >= 0].long().flatten()  # ignore_index (-100) excluded
        if valid.numel() == 0:
            return None
        p = torch.bincount(valid).float() / valid.numel()
        p = p[p > 0]
        return float(-(p * p.log()).sum())
    return None  # regression is not judged: a logged "val_loss" may be an RMSE/MAE, not the MSE the baseline is for


def learned_verdict(best_val: float, baseline: float, train_loss: float, checks: int, samples: int,
                    steps: int, min_steps: int) -> Verdict | None:
    """The runtime ``input-independent`` verdict: a warning when, after a fair chance, the best validation
    loss is no better than the exact constant baseline while the training loss is well below it; else ``None``.

    Example:
        >>> learned_verdict(2.41, 2.30, 0.9, 4, 300, 400, 100).severity
        'warning'
        >>> learned_verdict(0.41, 2.30, 0.2, 4, 300, 400, 100) is None
        True
    """
    figures = {"best_val_loss": best_val, "constant_baseline": baseline, "train_loss": train_loss,
               "val_checks": float(checks), "val_samples": float(samples)}
    if not all(math.isfinite(v) for v in (best_val, baseline, train_loss)) or baseline <= 0:
        return None
    fair = checks >= MIN_VAL_CHECKS and samples >= MIN_VAL_SAMPLES and steps >= min_steps
    if not fair or train_loss > TRAIN_FIT_RATIO * baseline or best_val < baseline:
        return None
    return Verdict(CODE, "warning", f"best validation loss {best_val:.4g} over {checks} checks is no better than the "
                   f"best constant prediction's {baseline:.4g} on the same {samples} validation samples, while the "
                   f"training loss fell to {train_loss:.4g}: the model fits its training data but learns nothing that "
                   "carries over, so the labels do not follow from the inputs (shuffled apart? a train/validation "
                   "mismatch?) or the forward barely uses them", figures)


class InputIndependenceCheck(PreflightCheck):
    """Check ``input-independent`` (tip R2.7), in two parts (see the module docstring).

    Pre-flight, on a copy: the output must change when the inputs are zeroed or replaced by noise; an
    exactly unchanged output with no layer depending on the input is a warning (a zero-initialised
    head is recognised and silent; a representation that collapsed to zero is an ``info`` pointing at
    ``dead-activation``). During training: the best validation loss must beat the exact loss of the
    best constant prediction once the model fits its training data (after ``steps`` steps and 3
    validation checks).

    Args:
        steps: training steps before the validation loss is compared with the constant baseline.
        budget_s: the safety net, in seconds, when this check runs alone (the work is planned in steps and samples).

    Example:
        >>> InputIndependenceCheck(steps=100).code
        'input-independent'
    """

    title: ClassVar[str] = "input-independent baseline"
    code: ClassVar[str] = "input-independent"

    def __init__(self, steps: int = 100, budget_s: float = DEFAULT_BUDGET_S) -> None:
        super().__init__(budget_s=budget_s)
        check_int("steps", steps, low=1)
        self.steps = steps
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._loss_name: str | None = None  # the loss function training_step calls (from the pre-flight trace)
        self._best_val = math.inf
        self._val_checks = 0
        self._val_targets: list[torch.Tensor] = []
        self._val_samples = 0
        self._train_sum: torch.Tensor | None = None
        self._train_count = 0
        self._judged = False

    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super()._begin_fit(trainer, pl_module)
        self._reset_runtime()

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "loss_name": self._loss_name, "best_val": self._best_val,
                "val_checks": self._val_checks, "judged": self._judged}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        super()._load_extra_state(state_dict)
        self._loss_name = state_dict.get("loss_name")
        self._best_val = float(state_dict.get("best_val", math.inf))
        self._val_checks = int(state_dict.get("val_checks", 0))
        self._judged = bool(state_dict.get("judged", False))

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        def measure() -> tuple[list[Verdict], str]:
            fig = input_independence(pl_module, batch)
            self._loss_name = fig["loss"] or None  # for the runtime comparison
            v = input_independence_verdict(fig)
            if fig["ignores_input"]:
                detail = "output unchanged by zeroed/random inputs"
            elif fig["explained"]:
                detail = f"output constant at init ({fig['explained']}: {fig['layer']})"
            else:
                detail = "output depends on the input"
            return [v], detail

        self._loss_name = None
        return settle(self, trainer, measure)

    # --- runtime hooks ---------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_sum, self._train_count = None, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._loss_name is None or self._judged:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            v = loss.detach().float().reshape(())
            self._train_sum = v if self._train_sum is None else self._train_sum + v  # no host sync
            self._train_count += 1

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_targets, self._val_samples = [], 0

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or self._loss_name is None or self._judged or dataloader_idx != 0:
            return
        split = split_batch(batch)
        if split is None or split[1].is_floating_point() or split[1].dim() == 0:
            return  # class-index targets only (the baseline is a class entropy)
        if sum(t.numel() for t in self._val_targets) < MAX_TARGET_ELEMENTS:  # e.g. per-pixel labels: a sample
            self._val_targets.append(split[1].detach().flatten())
        self._val_samples += int(split[1].shape[0])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: the epoch's logged metrics are only in
        # callback_metrics after the epoch-end hooks ran
        if trainer.sanity_checking or self._loss_name is None or self._judged or not self._val_targets:
            return
        key = next((k for k in trainer.callback_metrics if "val" in k.lower() and "loss" in k.lower()), None)
        if key is None or self._train_sum is None or not self._train_count:
            return
        targets = torch.cat(self._val_targets)
        baseline = constant_baseline(targets, self._loss_name)
        if baseline is None:
            return
        val, train = torch.stack([trainer.callback_metrics[key].detach().float().reshape(()).cpu(),
                                  (self._train_sum / self._train_count).cpu()]).tolist()
        self._val_checks += 1
        if math.isfinite(val):
            self._best_val = min(self._best_val, val)
        v = learned_verdict(self._best_val, baseline, train, self._val_checks, self._val_samples,
                            trainer.global_step, self.steps)
        if v is not None and v.severity is not None:
            self._judged = True
            self.report(trainer, v.code, v.severity, v.message, figures=v.figures)

"""``Recipe`` under other precisions and accelerators.

On this CPU machine: ``bf16-mixed`` (every pre-flight check runs; the guard works under autocast) and
``bf16-true`` (every check runs on bfloat16 copies; the fixes and the snapshot ensemble follow the dtype). Gated on hardware (``RunIf``): CUDA ``16-mixed`` (the grad scaler's inf gradients
are not findings), CUDA with ``torch.cuda.set_sync_debug_mode("error")`` on every unsampled step (the
recipe never syncs there), CUDA ``bf16-mixed``, and Apple MPS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import lightning_tips as lt
from examples.digits import DigitsCNN
from lightning_tips._utils import is_sampled
from lightning_tips.checks._preflight import CardLine
from lightning_tips.findings import CODES
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit, trainer_factory
from tests.helpers.runif import RunIf

MODEL_CHECKS = ("initial loss", "output activation", "batch independence", "input-independent baseline",
                "overfit one batch")


def _fit(
    callbacks: list[Callback],
    root: Path,
    *,
    model: pl.LightningModule | None = None,
    precision: str = "32-true",
    accelerator: str = "cpu",
    limit_train_batches: int = 6,
    data: DigitsDataModule | None = None,
) -> tuple[pl.Trainer, pl.LightningModule, list[str]]:
    """Seed 0, fit ``model`` (a fresh ``DigitsCNN`` by default) 2 epochs of ``limit_train_batches`` train and
    2 val batches; the trainer, the model and the TipWarnings emitted during the fit."""
    run = fit(trainer_factory(root), model or DigitsCNN, datamodule=data or DigitsDataModule(limit=384, val_limit=128),
              callbacks=callbacks, precision=precision, accelerator=accelerator, max_epochs=2,
              limit_train_batches=limit_train_batches, limit_val_batches=2)
    return run.trainer, run.model, run.warnings


def _card(recipe: lt.Recipe) -> dict[str, CardLine]:
    preflight = recipe.child(lt.Preflight)
    assert isinstance(preflight, lt.Preflight)
    lines = {line.check: line for line in preflight.card}
    assert set(MODEL_CHECKS) | {"data"} <= set(lines), lines
    for line in lines.values():
        assert line.status in ("pass", "finding", "skipped"), line
        if line.status == "skipped":
            assert line.detail, f"{line.check}: skipped without a reason"
    return lines


def _codes(recipe: lt.Recipe) -> list[str]:
    codes = [f.code for f in recipe.findings]
    assert set(codes) <= set(CODES)
    return codes


class NaNAt(DigitsCNN):
    """The loss turns NaN at one global step."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.nan_step = step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        # the guard re-runs the batch on a copy, which has no trainer: there the loss is finite
        return loss * float("nan") if self._trainer is not None and self.global_step == self.nan_step else loss


# --- CPU ----------------------------------------------------------------------------------------------
def test_recipe_with_bf16_mixed_runs_every_check(tmp_path: Path) -> None:
    recipe = lt.Recipe(every_n_steps=2, view_every_n_steps=2, preflight_budget_s=30.0)
    trainer, model, _ = _fit([recipe], tmp_path, precision="bf16-mixed")
    assert trainer.global_step == 12 and not trainer.should_stop
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    lines = _card(recipe)
    # under autocast the copies run like the real step: no check had to skip
    assert all(lines[name].status != "skipped" for name in (*MODEL_CHECKS, "data")), lines
    codes = _codes(recipe)
    assert not [c for c in codes if c.startswith("nonfinite")]
    assert not [f for f in recipe.findings if "could not" in f.message], recipe.findings
    # the statistics callbacks sampled under bf16 autocast
    grads = recipe.child(lt.GradientStats)
    acts = recipe.child(lt.ActivationStats)
    assert isinstance(grads, lt.GradientStats) and grads.state_dict()["count"] == 8  # steps 0, 1, 2, 4, 5, 6, 8, 10 (dense start)
    assert isinstance(acts, lt.ActivationStats) and acts.state_dict()["history"]


def test_nonfinite_guard_under_bf16_mixed_stops_and_locates(tmp_path: Path) -> None:
    recipe = lt.Recipe(every_n_steps=2, view_every_n_steps=2, preflight=False, nonfinite_every_n_steps=1)
    trainer, model, tips = _fit([recipe], tmp_path, model=NaNAt(3), precision="bf16-mixed")
    assert trainer.global_step == 4 and trainer.should_stop
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN update was dropped
    [nan] = [f for f in recipe.findings if f.code == "nonfinite-loss"]
    assert nan.step == 3 and nan.severity.value == "error"
    assert "re-running the batch on a copy gave a finite loss" in nan.message  # the copy ran under autocast
    assert sum(t.startswith("[nonfinite-loss]") for t in tips) == 1


def test_recipe_with_bf16_true_runs_every_check(tmp_path: Path) -> None:
    """bf16-true converts the model to bfloat16 and Lightning's loop converts batches with
    ``precision_plugin.convert_input``; the pre-flight's first batch is converted the same way, so the
    copies run (before that fix every model check skipped with a float/bfloat16 dtype error)."""
    recipe = lt.Recipe(every_n_steps=2, view_every_n_steps=2, preflight_budget_s=30.0)
    trainer, model, _ = _fit([recipe], tmp_path, precision="bf16-true")
    assert trainer.global_step == 12 and not trainer.should_stop
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    lines = _card(recipe)
    assert all(lines[name].status != "skipped" for name in (*MODEL_CHECKS, "data")), lines
    codes = _codes(recipe)
    assert not [c for c in codes if c.startswith("nonfinite")]
    assert not [f for f in recipe.findings if "could not" in f.message], recipe.findings
    grads = recipe.child(lt.GradientStats)
    assert isinstance(grads, lt.GradientStats) and grads.state_dict()["count"] == 8  # steps 0, 1, 2, 4, 5, 6, 8, 10 (dense start)


def test_recipe_with_every_fix_under_bf16_true(tmp_path: Path) -> None:
    """The fixes and the snapshot ensemble evaluate copies too: they must follow the module's dtype."""
    recipe = lt.Recipe(every_n_steps=2, view_every_n_steps=2, weight_init="auto", output_bias_init=True,
                       gradient_clip=1.0, lr_floor=0.01, early_stopping=True, snapshot_ensemble=2)
    trainer, model, _ = _fit([recipe], tmp_path, precision="bf16-true")
    assert trainer.global_step == 12
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    codes = _codes(recipe)
    assert {"weight-init", "output-bias", "gradient-clipping", "snapshot-ensemble"} <= set(codes)
    assert not [f for f in recipe.findings if "skipped" in f.message or "could not" in f.message], recipe.findings


# --- CUDA -----------------------------------------------------------------------------------------------
class LoudLoss(DigitsCNN):
    """Loss x 1e3: at GradScaler's initial scale 2**16 the fp16 backward overflows (|dL/dlogits| up to
    1e3 * 65536 / 64 > 65504), so the scaler finds inf gradients and skips steps until its scale fits."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx) * 1e3


@RunIf(min_cuda_gpus=1)
def test_recipe_on_cuda_16_mixed_scaler_skips_are_not_findings(tmp_path: Path) -> None:
    recipe = lt.Recipe(every_n_steps=2, view_every_n_steps=2)
    trainer, model, _ = _fit([recipe], tmp_path, model=LoudLoss(), precision="16-mixed", accelerator="cuda")
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    assert scaler is not None and scaler.get_scale() < 2.0**16  # the scaler did meet inf gradients and skip
    assert trainer.global_step == 12 and not trainer.should_stop  # the guard did not stop on them ...
    codes = _codes(recipe)
    assert "nonfinite-gradient" not in codes and "nonfinite-loss" not in codes  # ... nor report them
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(line.status != "skipped" for line in _card(recipe).values())


class SyncStrict(Callback):
    """Placed FIRST: turns CUDA syncs into errors from the start of every unsampled step."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self.strict_steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if is_sampled(trainer.global_step, self.every_n_steps, dense_start=True):  # the checks' dense start
            torch.cuda.set_sync_debug_mode("default")
        else:
            torch.cuda.set_sync_debug_mode("error")
            self.strict_steps += 1


class SyncRelax(Callback):
    """Placed LAST: back to normal once every callback's ``on_train_batch_end`` of the step has run."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        torch.cuda.set_sync_debug_mode("default")


def _strict_fit(callbacks: list[Callback], every: int, root: Path) -> tuple[pl.Trainer, SyncStrict]:
    strict = SyncStrict(every)
    try:
        trainer, _, _ = _fit([strict, *callbacks, SyncRelax()], root, accelerator="cuda", limit_train_batches=12,
                             data=DigitsDataModule())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return trainer, strict


@RunIf(min_cuda_gpus=1)
def test_recipe_never_syncs_with_the_gpu_on_unsampled_steps(tmp_path: Path) -> None:
    every = 4
    # control: Lightning's own loop must be sync-free on these steps, or the test would measure Lightning
    try:
        _strict_fit([], every, tmp_path / "plain")
    except RuntimeError as err:
        if "synchroniz" not in str(err):
            raise
        pytest.skip(f"the plain Lightning loop syncs inside a training step here: {err}")
    recipe = lt.Recipe(every_n_steps=every, view_every_n_steps=every, nonfinite_every_n_steps=every)
    trainer, strict = _strict_fit([recipe], every, tmp_path / "recipe")
    assert trainer.global_step == 24
    sampled = [s for s in range(24) if is_sampled(s, every, dense_start=True)]  # 0, 1, 2, 4, 5, 8, 10, ...
    assert strict.strict_steps == 24 - len(sampled)  # every unsampled step ran under "error" without raising
    grads = recipe.child(lt.GradientStats)
    assert isinstance(grads, lt.GradientStats) and grads.state_dict()["count"] == len(sampled)  # sampled steps did work
    assert not [f for f in recipe.findings if "could not" in f.message], recipe.findings


@RunIf(min_cuda_gpus=1, bf16_cuda=True)
def test_recipe_on_cuda_bf16_mixed(tmp_path: Path) -> None:
    recipe = lt.Recipe(every_n_steps=2, view_every_n_steps=2, preflight_budget_s=30.0)
    trainer, _, _ = _fit([recipe], tmp_path, precision="bf16-mixed", accelerator="cuda")
    assert trainer.global_step == 12 and not trainer.should_stop
    assert all(line.status != "skipped" for line in _card(recipe).values())
    assert not [c for c in _codes(recipe) if c.startswith("nonfinite")]


# --- Apple MPS -----------------------------------------------------------------------------------------
@RunIf(mps=True)
def test_recipe_on_mps(tmp_path: Path) -> None:
    """MPS has no float64: every statistic must stay float32 on the device."""
    recipe = lt.Recipe(every_n_steps=2, view_every_n_steps=2, preflight_budget_s=30.0)
    trainer, model, _ = _fit([recipe], tmp_path, accelerator="mps")
    assert trainer.global_step == 12 and not trainer.should_stop
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(line.status != "skipped" for line in _card(recipe).values())
    assert not [f for f in recipe.findings if "could not" in f.message], recipe.findings
    grads = recipe.child(lt.GradientStats)
    assert isinstance(grads, lt.GradientStats) and grads.state_dict()["count"] == 8  # steps 0, 1, 2, 4, 5, 6, 8, 10 (dense start)

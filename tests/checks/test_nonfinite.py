"""NonFiniteGuard: planted NaNs (lr too high, NaN data, bad custom backward) and their healthy twins."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips import TipError
from lightning_tips.checks import nonfinite as nonfinite_mod
from lightning_tips.checks.nonfinite import NonFiniteGuard, first_nonfinite_module, nonfinite_parameters
from tests.helpers.data import DigitsDataModule, breast_cancer_tensors, digits_tensors
from tests.helpers.fitting import run_fit
from tests.helpers.models import Classifier, mlp, small_cnn
from tests.helpers.probes import SyncSpy
from tests.helpers.runtime_models import GatedMLP, LogNet, ManualNaN, NaNAtStep


def _cancer_loader(normalize: bool, nan_at: tuple[int, int] | None = None, batch_size: int = 32) -> DataLoader:
    x, y = breast_cancer_tensors(normalize=normalize)
    if nan_at is not None:
        x = x.clone()
        x[nan_at] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _digits_loader(n: int = 320, batch_size: int = 32) -> DataLoader:
    x, y = digits_tensors(image=False)
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch_size, shuffle=False)


class _Params(pl.Callback):
    """Snapshots of the parameters before every optimizer step (after our guard, which runs first)."""

    def __init__(self) -> None:
        self.before: dict[int, list[torch.Tensor]] = {}
        self.after: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.before[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.after[trainer.global_step - 1] = [p.detach().clone() for p in pl_module.parameters()]


# --- pure functions ------------------------------------------------------------------------------
def test_first_nonfinite_module_names_container_code_and_execution_order() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(self.lin(x) - 100.0)  # NaN made by the container's own code

    # registered out of execution order: execution order must win
    net = nn.Module()
    net.late = nn.Linear(2, 1)
    net.block = Block()
    found, out = first_nonfinite_module(net, lambda: net.late(net.block(torch.ones(4, 2))))
    assert found == ("block", "Block", "nan")
    assert torch.isnan(out).all()
    found, _ = first_nonfinite_module(net, lambda: net.late(net.block.lin(torch.ones(4, 2))))
    assert found is None
    assert all(not m._forward_hooks for m in net.modules())


def test_nonfinite_parameters_names_only_bad_gradients() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[0].weight.grad = torch.full((2, 2), float("inf"))
    net[1].weight.grad = torch.ones(1, 2)
    assert nonfinite_parameters(net) == ["0.weight"]
    assert nonfinite_parameters(net, [net[1].weight]) == []
    assert nonfinite_parameters(nn.Linear(2, 1)) == []  # no gradients at all


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.SGD, torch.optim.AdamW])
def test_torch_optimizers_skip_parameters_without_gradient(opt_cls: type[torch.optim.Optimizer]) -> None:
    """The basis of action='skip': grad=None leaves the parameter and its optimizer state alone."""
    w = nn.Parameter(torch.ones(3))
    opt = opt_cls([w], lr=0.1, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
    w.grad = torch.ones(3)
    opt.step()
    value, state = w.detach().clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[w].items()}
    w.grad = None
    opt.step()
    assert torch.equal(w, value)
    for k, v in opt.state[w].items():
        assert torch.equal(v, state[k]) if torch.is_tensor(v) else v == state[k]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Expected action"):
        NonFiniteGuard(action="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected every_n_steps"):
        NonFiniteGuard(every_n_steps=-1)
    with pytest.raises(ValueError, match="every_n_steps=1 with action='skip'"):
        NonFiniteGuard(action="skip", every_n_steps=5)


# --- planted bugs and healthy twins --------------------------------------------------------------
def test_lr_far_too_high_stops_at_the_nan_and_names_the_log_layer(make_trainer: Any) -> None:
    pl.seed_everything(0)
    model = Classifier(LogNet(), lr=1e6, optimizer="sgd")
    guard, params = NonFiniteGuard(), _Params()
    trainer = make_trainer(callbacks=[guard, params], max_steps=10, deterministic=True)
    msgs = run_fit(trainer, model, _cancer_loader(normalize=False))

    [f] = guard.findings
    assert (f.code, f.severity.value, f.step, f.module) == ("nonfinite-loss", "error", 1, "net.log")
    assert "loss is nan at step 1" in f.message and "LogLayer" in f.message
    assert "T7" in f.advice and "P10" in f.advice
    # stopped at the step the NaN appeared, and the bad update was dropped: weights stay finite
    assert trainer.global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(params.before[1], params.after[1]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(msgs) == 1 and msgs[0].startswith("[nonfinite-loss] error: the loss is nan at step 1")
    assert guard.counts["nonfinite-loss"] == 1 and guard.reported_steps == [1]


def test_sane_lr_on_normalised_data_is_silent(make_trainer: Any) -> None:
    """Twin of the above: same LogNet, lr 1e-3, normalised data -> no finding."""
    pl.seed_everything(0)
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=10)
    assert run_fit(trainer, Classifier(LogNet(), lr=1e-3), _cancer_loader(normalize=True)) == []
    assert guard.findings == [] and trainer.global_step == 10


def test_nan_in_the_data_names_the_field(make_trainer: Any) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=10)
    run_fit(trainer, Classifier(mlp(30, 2)), _cancer_loader(normalize=True, nan_at=(40, 3)))
    [f] = guard.findings
    assert (f.code, f.step, f.module) == ("nonfinite-input", 1, "batch[0]")
    assert "`batch[0]` (1 value)" in f.message and "R1" in f.advice
    assert trainer.global_step == 2


def test_nan_input_between_full_checks_is_found_through_the_loss(make_trainer: Any) -> None:
    """full_every_n_steps=100: step 1's inputs are not summed, but its NaN loss has the batch examined."""
    pl.seed_everything(0)
    guard = NonFiniteGuard(full_every_n_steps=100)
    trainer = make_trainer(callbacks=[guard], max_steps=10)
    run_fit(trainer, Classifier(mlp(30, 2)), _cancer_loader(normalize=True, nan_at=(40, 3)))
    [f] = guard.findings
    assert (f.code, f.step, f.module) == ("nonfinite-input", 1, "batch[0]")
    assert trainer.global_step == 2  # the bad update was still dropped


def test_gradients_and_inputs_are_only_reduced_on_full_check_steps(make_trainer: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = nonfinite_mod.grad_norms
    monkeypatch.setattr(nonfinite_mod, "grad_norms", lambda grads: calls.append(trainer.global_step) or real(grads))
    guard = NonFiniteGuard(full_every_n_steps=3)
    trainer = make_trainer(callbacks=[guard], max_steps=7)
    run_fit(trainer, Classifier(mlp(64, 10)), _digits_loader())
    assert calls == [0, 3, 6] and guard.findings == []


def test_custom_backward_nan_names_the_parameter(make_trainer: Any) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=10)
    run_fit(trainer, Classifier(GatedMLP()), _digits_loader())
    [f] = guard.findings
    assert (f.code, f.step, f.module) == ("nonfinite-gradient", 0, "net.gate.gain")
    assert "loss is finite" in f.message and "`net.gate.gain`" in f.message
    assert "`net.head" not in f.message  # only the parameter whose gradient is NaN
    assert trainer.global_step == 1


def test_healthy_digits_cnn_is_silent(make_trainer: Any) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=15)
    assert run_fit(trainer, Classifier(small_cnn(), lr=1e-3), DigitsDataModule(batch_size=32).train_dataloader()) == []
    assert guard.findings == [] and guard.counts == dict.fromkeys(guard.counts, 0)


# --- actions ---------------------------------------------------------------------------------------
def test_skip_drops_exactly_the_bad_update_and_goes_on(make_trainer: Any) -> None:
    pl.seed_everything(0)
    model = NaNAtStep(mlp(), bad_step=3)
    guard, params = NonFiniteGuard(action="skip"), _Params()
    trainer = make_trainer(callbacks=[guard, params], max_steps=8)
    msgs = run_fit(trainer, model, _digits_loader())
    assert trainer.global_step == 8
    assert all(torch.equal(a, b) for a, b in zip(params.before[3], params.after[3]))  # no update at step 3
    assert not all(torch.equal(a, b) for a, b in zip(params.before[4], params.after[4]))  # updates resume
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # Adam's moments did not see the bad step: 7 updates, not 8
    opt = trainer.optimizers[0]
    assert all(int(opt.state[p]["step"]) == 7 for p in model.parameters())
    [f] = guard.findings
    assert (f.code, f.severity.value, f.step) == ("nonfinite-loss", "warning", 3)
    assert "finite loss" in f.message  # the copy has no Trainer: the NaN is step-dependent
    assert guard.skipped_steps == [3] and len(msgs) == 1


def test_warn_changes_nothing_and_reports_once(make_trainer: Any) -> None:
    pl.seed_everything(0)
    model = NaNAtStep(mlp(), bad_step=2, optimizer="sgd")
    guard = NonFiniteGuard(action="warn")
    trainer = make_trainer(callbacks=[guard], max_steps=6)
    msgs = run_fit(trainer, model, _digits_loader())
    assert trainer.global_step == 6
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # the NaN update went through
    assert len(msgs) == 1 and msgs[0].startswith("[nonfinite-loss] error")
    assert guard.counts["nonfinite-loss"] == 4  # steps 2..5 all NaN, reported once


def test_raise_raises_tip_error_with_the_code(make_trainer: Any) -> None:
    pl.seed_everything(0)
    trainer = make_trainer(callbacks=[NonFiniteGuard(action="raise")], max_steps=6)
    with warnings.catch_warnings(), pytest.raises(TipError) as info:
        warnings.simplefilter("ignore")
        trainer.fit(NaNAtStep(mlp(), bad_step=2), _digits_loader())
    assert info.value.code == "nonfinite-loss" and info.value.finding is not None
    assert info.value.finding.step == 2


def test_manual_optimization_is_checked(make_trainer: Any) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=6)
    run_fit(trainer, ManualNaN(mlp(), bad_step=2), _digits_loader())
    assert [(f.code, f.step) for f in guard.findings] == [("nonfinite-loss", 2)]
    assert trainer.global_step == 3


# --- mixed precision ---------------------------------------------------------------------------------
def test_fp16_scaler_overflow_is_not_a_false_alarm(make_trainer: Any) -> None:
    """16-mixed on CPU needs an explicit plugin (Lightning maps the flag to bf16 on CPU). A huge
    initial scale makes the first backward passes overflow to inf: the scaler skips those steps."""
    pl.seed_everything(0)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**40))
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=8, plugins=[plugin])
    assert run_fit(trainer, Classifier(mlp()), _digits_loader()) == []
    assert plugin.scaler is not None and plugin.scaler.get_scale() < 2.0**40  # it did skip steps
    assert guard.findings == [] and trainer.global_step == 8


def test_fp16_scaler_still_reports_a_nonfinite_loss(make_trainer: Any) -> None:
    pl.seed_everything(0)
    plugin = MixedPrecision("16-mixed", "cpu")
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=8, plugins=[plugin])
    run_fit(trainer, NaNAtStep(mlp(), bad_step=2), _digits_loader())
    assert [(f.code, f.step) for f in guard.findings] == [("nonfinite-loss", 2)]


def test_bf16_mixed_is_checked_normally(make_trainer: Any) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=8, precision="bf16-mixed")
    run_fit(trainer, Classifier(GatedMLP()), _digits_loader())
    assert [(f.code, f.module) for f in guard.findings] == [("nonfinite-gradient", "net.gate.gain")]
    pl.seed_everything(0)
    healthy = NonFiniteGuard()
    trainer = make_trainer(callbacks=[healthy], max_steps=8, precision="bf16-mixed")
    assert run_fit(trainer, Classifier(mlp()), _digits_loader()) == [] and healthy.findings == []


# --- cheapness ---------------------------------------------------------------------------------------
def test_one_host_sync_per_sampled_step_and_none_otherwise(make_trainer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Tensor.item/tolist/__bool__/__float__ called from the guard's modules is counted."""
    spy = SyncSpy(monkeypatch, [nonfinite_mod.__file__, nonfinite_mod.grad_norms.__code__.co_filename])

    pl.seed_everything(0)
    guard = NonFiniteGuard(every_n_steps=4)
    trainer = make_trainer(callbacks=[spy, guard], max_steps=11)
    run_fit(trainer, Classifier(mlp()), _digits_loader(n=384))
    # sampled steps 0, 4, 8, and once at the end for steps 9-10
    assert spy.calls == [0, 4, 8, "end"]
    assert guard.findings == []


def test_period_zero_is_off_no_sync_nothing_queued(make_trainer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """every_n_steps=0 means no periodic work (the pack's one meaning of 0): a guard that is off."""
    spy = SyncSpy(monkeypatch, [nonfinite_mod.__file__, nonfinite_mod.grad_norms.__code__.co_filename])
    pl.seed_everything(0)
    guard = NonFiniteGuard(every_n_steps=0)
    trainer = make_trainer(callbacks=[spy, guard], max_steps=8)
    run_fit(trainer, NaNAtStep(mlp(), bad_step=3, optimizer="sgd"), _digits_loader(n=384))
    assert spy.calls == [] and guard._pending == [] and guard.findings == []  # not even the end-of-fit sync


def test_late_detection_names_the_first_bad_step(make_trainer: Any) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard(every_n_steps=4)
    trainer = make_trainer(callbacks=[guard], max_steps=12)
    run_fit(trainer, NaNAtStep(mlp(), bad_step=5, optimizer="sgd"), _digits_loader(n=384))
    f = guard.findings[0]
    assert (f.code, f.step) == ("nonfinite-loss", 5)
    assert "noticed at step 8" in f.message
    assert trainer.global_step == 9


# --- observer and state -------------------------------------------------------------------------------
def test_pure_observer_on_a_healthy_run(make_trainer: Any) -> None:
    def run(callbacks: list[pl.Callback]) -> list[torch.Tensor]:
        pl.seed_everything(0)
        model = Classifier(small_cnn())
        trainer = make_trainer(callbacks=callbacks, max_steps=6, deterministic=True)
        run_fit(trainer, model, DigitsDataModule(batch_size=32).train_dataloader())
        return [p.detach().clone() for p in model.parameters()]

    plain, guarded = run([]), run([NonFiniteGuard()])
    assert all(torch.equal(a, b) for a, b in zip(plain, guarded))


def test_state_round_trip_through_a_checkpoint(make_trainer: Any, tmp_path: Path) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard(action="skip")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4)
    trainer = make_trainer(callbacks=[guard, ckpt], max_steps=4, enable_checkpointing=True)
    run_fit(trainer, NaNAtStep(mlp(), bad_step=1), _digits_loader())
    assert guard.counts["nonfinite-loss"] == 1 and guard.skipped_steps == [1]

    resumed = NonFiniteGuard(action="skip")
    trainer = make_trainer(callbacks=[resumed], max_steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(NaNAtStep(mlp(), bad_step=6), _digits_loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.counts["nonfinite-loss"] == 2
    assert resumed.reported_steps == [1, 6] and resumed.skipped_steps == [1, 6]
    assert [f.step for f in resumed.findings] == [1]  # the second is counted, not re-reported
    assert math.isnan(resumed.findings[0].figures["value"])
    assert guard.state_key != NonFiniteGuard(action="stop").state_key


def test_steps_after_the_last_sample_are_checked_at_the_end(make_trainer: Any) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard(every_n_steps=50)
    trainer = make_trainer(callbacks=[guard], max_steps=10)
    run_fit(trainer, NaNAtStep(mlp(), bad_step=7), _digits_loader())
    assert [(f.code, f.step) for f in guard.findings] == [("nonfinite-loss", 7)]


class _DictBatches(Classifier):
    """Dict batches ({'x', 'y', 'name'}) and a dict output from training_step."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"loss": self.loss_fn(self(batch["x"]), batch["y"])}


def _dict_loader(nan_at: int | None = None) -> DataLoader:
    x, y = digits_tensors(image=False)
    x = x[:128].clone()
    if nan_at is not None:
        x[nan_at, 5] = float("inf")
    data = [{"x": x[i], "y": y[i], "name": f"s{i}"} for i in range(len(x))]
    return DataLoader(data, batch_size=32, shuffle=False)  # type: ignore[arg-type]


def test_dict_batches_with_strings_name_the_key(make_trainer: Any) -> None:
    pl.seed_everything(0)
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=4)
    run_fit(trainer, _DictBatches(mlp()), _dict_loader(nan_at=70))
    [f] = guard.findings
    assert (f.code, f.step, f.module) == ("nonfinite-input", 2, "batch['x']")
    healthy = NonFiniteGuard()
    trainer = make_trainer(callbacks=[healthy], max_steps=4)
    assert run_fit(trainer, _DictBatches(mlp()), _dict_loader()) == []


def test_a_training_step_that_cannot_rerun_on_a_copy_still_reports(make_trainer: Any) -> None:
    class NeedsTrainer(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.trainer.global_step == 1 else loss  # raises on a copy

    pl.seed_everything(0)
    guard = NonFiniteGuard()
    trainer = make_trainer(callbacks=[guard], max_steps=4)
    run_fit(trainer, NeedsTrainer(mlp()), _digits_loader())
    [f] = guard.findings
    assert (f.code, f.step) == ("nonfinite-loss", 1) and "could not re-run the batch" in f.message
    assert trainer.global_step == 2


def test_locate_false_does_not_copy_the_model(make_trainer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[Any] = []
    monkeypatch.setattr(nonfinite_mod, "model_copy", lambda m: copies.append(m) or m)
    pl.seed_everything(0)
    guard = NonFiniteGuard(locate=False)
    trainer = make_trainer(callbacks=[guard], max_steps=10)
    run_fit(trainer, Classifier(LogNet(), lr=1e6, optimizer="sgd"), _cancer_loader(normalize=False))
    [f] = guard.findings
    assert (f.code, f.step, f.module) == ("nonfinite-loss", 1, None) and copies == []

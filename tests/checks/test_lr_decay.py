"""LRDecayGuard (R3.4, P7, R3.2): the lr-schedule replay, the runtime re-check, the floor fix, optimizer defaults."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.optim import lr_scheduler as S

from lightning_tips.checks.lr_decay import (
    LRDecayGuard,
    decay_verdict,
    optimizer_defaults_verdict,
    simulate_lrs,
    unsimulatable_reason,
)
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit
from tests.helpers.loop_models import LRRecorder, ScheduledClassifier
from tests.helpers.models import mlp

EPOCHS, BATCHES = 6, 10  # 60 planned optimizer steps


def _fit(make_trainer, scheduler=None, *callbacks: Callback, lr=1e-3, optimizer="adam", **kwargs):
    """Seed 0, fit a scheduled MLP (EPOCHS epochs of BATCHES batches, no validation); warnings pass."""
    run = fit(make_trainer, lambda: ScheduledClassifier(mlp(hidden=16), lr=lr, optimizer=optimizer, scheduler=scheduler),
              DigitsDataModule(batch_size=32), callbacks=callbacks, warns="pass",
              **{"max_epochs": EPOCHS, "limit_train_batches": BATCHES, "limit_val_batches": 0, **kwargs})
    return run.trainer, run.model


def _codes(guard: LRDecayGuard) -> list[tuple[str, str]]:
    return [(f.code, f.severity.value) for f in guard.findings]


# --- pure functions --------------------------------------------------------------------------------
def _opt(lr: float = 0.1, groups: int = 1) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * (g + 1)} for g in range(groups)], lr=lr,
        momentum=0.9,
    )


def test_simulate_lrs_matches_stepping_a_real_copy_and_leaves_user_objects_alone():
    opt = _opt(groups=2)
    sched = S.CosineAnnealingLR(opt, T_max=7)
    before_opt, before_sched = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    lrs = simulate_lrs(opt, [(sched, "step", 1)], steps=20, batches_per_epoch=math.inf)
    ref_opt = _opt(groups=2)
    ref = S.CosineAnnealingLR(ref_opt, T_max=7)
    expected = []
    for _ in range(20):
        expected.append([g["lr"] for g in ref_opt.param_groups])
        ref_opt.step()
        ref.step()
    assert lrs == expected
    assert opt.state_dict() == before_opt and sched.state_dict() == before_sched
    assert not getattr(opt, "_opt_called", False)


def test_simulate_lrs_epoch_interval_frequency_and_accumulation():
    opt = _opt()
    sched = S.StepLR(opt, step_size=1, gamma=0.5)
    # 5 batches/epoch, accumulate 2 -> optimizer steps at batches 1, 3, 4: 3 steps/epoch; stepped every 2 epochs
    lrs = [r[0] for r in simulate_lrs(opt, [(sched, "epoch", 2)], 12, batches_per_epoch=5, accumulate_grad_batches=2)]
    assert lrs == [0.1] * 6 + [0.05] * 6


def test_simulate_lrs_chained_schedulers_share_the_shadow_optimizer():
    opt = _opt()
    warm = S.LinearLR(opt, start_factor=0.1, total_iters=4)
    decay = S.ExponentialLR(opt, gamma=0.5)
    lrs = [r[0] for r in simulate_lrs(opt, [(warm, "step", 1), (decay, "epoch", 1)], 8, batches_per_epoch=4)]
    # warm-up over the first epoch's 4 steps, then halved after each epoch
    assert lrs[0] == pytest.approx(0.01) and lrs[4] == pytest.approx(0.05) and lrs[7] == pytest.approx(0.05)


def test_decay_verdict_cases():
    assert decay_verdict([1.0] * 10, 10) is None
    v = decay_verdict([1.0, 0.5, 1e-4], 100)
    assert v is not None and v.code == "lr-decay" and v.severity == "warning" and v.figures["crossed_step"] == 2.0
    assert decay_verdict([1.0, 1.0, 1e-4], 4) is None  # crossing at 2 of 4 is not before half
    assert decay_verdict([0.0, 0.0, 1.0, 0.9], 10) is None  # warm-up from zero is not a decay
    v = decay_verdict([1e-5], 100, start_step=3, peak=1.0, optimizer_index=1, group=2)
    assert v is not None and v.figures["crossed_step"] == 3.0 and v.module == "optimizer[1].param_groups[2]"
    assert v.message.startswith("the lr of param group 2 is 1e-05, below 0.001 x its peak 1, at step 3 of 100")


def test_unsimulatable_reason():
    opt = _opt()
    assert "ReduceLROnPlateau" in unsimulatable_reason(S.ReduceLROnPlateau(opt))
    assert unsimulatable_reason(S.LambdaLR(opt, lambda s: 0.9**s)) is None
    calls = 0

    def counting(step: int) -> float:
        nonlocal calls
        calls += 1
        return 1.0

    assert "keeps state" in unsimulatable_reason(S.LambdaLR(_opt(), counting))
    seq = S.SequentialLR(opt, [S.LambdaLR(opt, counting), S.ConstantLR(opt)], milestones=[3])
    assert "keeps state" in unsimulatable_reason(seq)


def test_optimizer_defaults_verdict():
    p = [torch.nn.Parameter(torch.zeros(1))]
    v = optimizer_defaults_verdict(torch.optim.AdamW(p, lr=0.05), 1)
    assert v is not None and (v.code, v.severity, v.module) == ("optimizer-defaults", "info", "optimizer[1]")
    assert "for Adam-family optimizers" in v.message and v.figures == {"lr": 0.05, "low": 1e-5, "high": 1e-2}
    v = optimizer_defaults_verdict(torch.optim.SGD(p, lr=1e-5))
    assert v is not None and "10x below the usual [0.0001, 1] for SGD optimizers" in v.message
    assert optimizer_defaults_verdict(torch.optim.SGD(p, lr=0.1)) is None
    assert optimizer_defaults_verdict(torch.optim.RMSprop(p, lr=10.0)) is None  # no rule for it


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_ratio": 0.0}, "min_ratio"), ({"by_fraction": 1.5}, "by_fraction"), ({"every_n_steps": -1}, "every_n"),
     ({"floor": 2.0}, "floor")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRDecayGuard(**kwargs)


# --- planted bugs through Trainer.fit ----------------------------------------------------------------
def test_flags_steplr_meant_in_epochs_stepped_per_batch(make_trainer):
    guard = LRDecayGuard(every_n_steps=0)
    _fit(make_trainer, lambda o: {"scheduler": S.StepLR(o, step_size=2, gamma=0.1), "interval": "step"}, guard)
    [finding] = guard.findings
    assert (finding.code, finding.severity.value) == ("lr-decay", "warning")
    assert finding.step == 0  # reported before the first optimizer step
    assert finding.figures["crossed_step"] == 8 and finding.figures["planned_steps"] == EPOCHS * BATCHES
    assert finding.figures["crossed_fraction"] < 0.5
    assert "step_size=2 looks like a number of epochs" in finding.message and "StepLR" in finding.message


def test_flags_cosine_tmax_in_epochs_stepped_per_batch(make_trainer):
    guard = LRDecayGuard(every_n_steps=0)
    _fit(make_trainer, lambda o: {"scheduler": S.CosineAnnealingLR(o, T_max=EPOCHS), "interval": "step"}, guard)
    [finding] = guard.findings
    assert finding.severity.value == "warning" and finding.figures["crossed_step"] == EPOCHS
    assert "T_max=6" in finding.message


@pytest.mark.parametrize(
    "scheduler",
    [
        None,  # constant lr
        lambda o: S.StepLR(o, step_size=2, gamma=0.1),  # the same StepLR, stepped per epoch as meant
        lambda o: S.CosineAnnealingLR(o, T_max=EPOCHS),  # per epoch over the whole run
        lambda o: {"scheduler": S.OneCycleLR(o, max_lr=1e-2, total_steps=EPOCHS * BATCHES), "interval": "step"},
        lambda o: {  # warm-up + cosine over the full run
            "scheduler": S.SequentialLR(
                o, [S.LinearLR(o, start_factor=0.01, total_iters=6), S.CosineAnnealingLR(o, T_max=54)], milestones=[6]
            ),
            "interval": "step",
        },
        lambda o: {"scheduler": S.LambdaLR(o, lambda s: min(1.0, s / 10)), "interval": "step"},  # warm-up from 0
    ],
    ids=["constant", "steplr-epoch", "cosine-epoch", "onecycle", "warmup-cosine", "warmup-from-zero"],
)
def test_silent_on_healthy_schedules(make_trainer, scheduler):
    guard = LRDecayGuard(every_n_steps=1)
    _fit(make_trainer, scheduler, guard)
    assert guard.findings == []


def test_reduce_on_plateau_is_skipped_with_info(make_trainer):
    guard = LRDecayGuard()
    sched = lambda o: {"scheduler": S.ReduceLROnPlateau(o), "monitor": "val_loss"}  # noqa: E731
    _fit(make_trainer, sched, guard, max_epochs=2, limit_val_batches=2)
    [finding] = guard.findings
    assert finding.severity.value == "info" and "ReduceLROnPlateau" in finding.message


def test_stateful_lambda_is_skipped_then_caught_at_runtime_without_touching_its_state(make_trainer):
    counts = {}

    def make(o):
        calls = 0

        def halve(step: int) -> float:
            nonlocal calls
            calls += 1
            counts["calls"] = calls
            return 0.5**step

        return {"scheduler": S.LambdaLR(o, halve), "interval": "step"}

    _fit(make_trainer, make)
    plain_calls = counts["calls"]
    guard = LRDecayGuard(every_n_steps=5)
    _fit(make_trainer, make, guard)
    assert counts["calls"] == plain_calls  # the replay did not call the user's stateful function
    info, runtime = guard.findings
    assert info.severity.value == "info" and "keeps state" in info.message
    assert runtime.severity.value == "warning" and runtime.code == "lr-decay"
    assert runtime.figures["crossed_step"] == 10  # 0.5**10 < 1e-3 at the first sampled step after it
    assert runtime.module == "optimizer[0].param_groups[0]"


class _Uncopyable(S.LambdaLR):
    def __deepcopy__(self, memo):
        raise RuntimeError("no copies of this one")


def test_scheduler_that_cannot_be_copied_is_info_not_a_crash(make_trainer):
    guard = LRDecayGuard()
    _fit(make_trainer, lambda o: {"scheduler": _Uncopyable(o, lambda s: 1.0), "interval": "step"}, guard, max_epochs=1)
    [finding] = guard.findings
    assert finding.severity.value == "info" and "no copies of this one" in finding.message


class _Replay(Callback):
    """Replays the trainer's own schedulers at fit start, as the guard does, for comparison with the real lrs."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opt = trainer.optimizers[0]
        schedules = [(c.scheduler, c.interval, c.frequency) for c in trainer.lr_scheduler_configs]
        self.lrs = [r[0] for r in simulate_lrs(opt, schedules, trainer.estimated_stepping_batches,
                                               trainer.num_training_batches, trainer.accumulate_grad_batches)]


def test_replay_matches_lightnings_real_stepping(make_trainer):
    def scheds(o):
        return [
            {"scheduler": S.StepLR(o, step_size=1, gamma=0.8), "interval": "step", "frequency": 3},
            {"scheduler": S.ExponentialLR(o, gamma=0.5), "interval": "epoch", "frequency": 2},
        ]

    class TwoSchedulers(ScheduledClassifier):
        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=1e-3)
            return [opt], scheds(opt)

    replay, seen = _Replay(), LRRecorder()
    pl.seed_everything(0)
    trainer = make_trainer(callbacks=[replay, seen], max_epochs=4, limit_train_batches=7, limit_val_batches=0,
                           accumulate_grad_batches=2)
    trainer.fit(TwoSchedulers(mlp(hidden=8)), DigitsDataModule(batch_size=32))
    assert len(seen.lrs) == 16  # 4 optimizer steps per 7-batch epoch
    assert replay.lrs == pytest.approx(seen.lrs, rel=1e-12)


def test_pure_observer_bit_identical(make_trainer):
    sched = lambda o: {"scheduler": S.CosineAnnealingLR(o, T_max=EPOCHS), "interval": "step"}  # noqa: E731
    _, plain = _fit(make_trainer, sched, deterministic=True)
    guard = LRDecayGuard(every_n_steps=1)
    _, guarded = _fit(make_trainer, sched, guard, deterministic=True)
    assert guard.findings  # it did its work (flagged the schedule) ...
    for a, b in zip(plain.parameters(), guarded.parameters()):  # ... and training is unchanged
        assert torch.equal(a, b)


def test_floor_fix_clamps_the_lr(make_trainer):
    guard, seen = LRDecayGuard(floor=0.01, every_n_steps=0), LRRecorder()
    _fit(make_trainer, lambda o: {"scheduler": S.StepLR(o, step_size=2, gamma=0.1), "interval": "step"}, guard, seen)
    assert min(seen.lrs) == pytest.approx(1e-5) and seen.lrs[-1] == pytest.approx(1e-5)
    assert seen.lrs[:2] == [1e-3, 1e-3]
    codes = _codes(guard)
    assert codes == [("lr-decay", "warning"), ("lr-decay", "info")]
    assert "floor engaged" in guard.findings[1].message


# --- optimizer defaults (R3.2) ----------------------------------------------------------------------
@pytest.mark.parametrize(("optimizer", "lr", "flagged"), [("adam", 0.1, "10x above"), ("sgd", 1e-5, "10x below"),
                                                          ("sgd", 5.0, "5x above"),
                                                          ("adam", 3e-4, None), ("sgd", 0.1, None)])
def test_optimizer_defaults(make_trainer, optimizer, lr, flagged):
    """An lr 100x the usual (SGD at 5.0, AdamW at 0.1) stays an info at the start (#12): no harm seen yet; the
    confirmed blow-up is GradientStats' `exploding-gradient` warning, which names the lr (the message says so)."""
    guard = LRDecayGuard()
    _fit(make_trainer, None, guard, lr=lr, optimizer=optimizer, max_epochs=1, limit_train_batches=2)
    assert [c for c in _codes(guard) if c[0] == "optimizer-defaults"] == ([("optimizer-defaults", "info")] if flagged else [])
    if flagged:
        [f] = [f for f in guard.findings if f.code == "optimizer-defaults"]
        assert f.figures["lr"] == pytest.approx(lr)
        assert flagged in f.message and "`exploding-gradient` names this lr" in f.message


# --- state ---------------------------------------------------------------------------------------------
def test_state_round_trip(make_trainer, tmp_path):
    sched = lambda o: {"scheduler": S.StepLR(o, step_size=2, gamma=0.1), "interval": "step"}  # noqa: E731
    guard = LRDecayGuard(every_n_steps=5)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _fit(make_trainer, sched, guard, ckpt, max_epochs=2, enable_checkpointing=True)
    state = guard.state_dict()
    assert state["flagged"] == [[0, 0]] and state["initial"] == [[0, 0, 1e-3]]

    direct = LRDecayGuard(every_n_steps=5)
    direct.load_state_dict(state)
    assert direct.state_dict() == state

    resumed = LRDecayGuard(every_n_steps=5)
    pl.seed_everything(0)
    trainer = make_trainer(callbacks=[resumed], max_epochs=4, limit_train_batches=BATCHES, limit_val_batches=0)
    model = ScheduledClassifier(mlp(hidden=16), scheduler=sched)
    trainer.fit(model, DigitsDataModule(batch_size=32), ckpt_path=ckpt.last_model_path)
    assert resumed._initial[(0, 0)] == 1e-3  # not the decayed lr the resumed run starts with
    assert resumed.findings[0].figures == guard.findings[0].figures  # restored, not re-reported
    assert len([f for f in resumed.findings if f.severity.value == "warning"]) == 1

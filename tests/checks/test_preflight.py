"""Preflight: all model checks (and the data checks) on one batch, one budget, one card; pure observer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_tips.checks._preflight import PreflightCheck, WorkPlan, first_train_batch, run_preflight
from lightning_tips.preflight import Preflight
from tests.helpers.data import DigitsDataModule
from tests.helpers.models import Classifier, small_cnn
from tests.helpers.preflight_models import ReshapeMixer, big_init, bn_cnn, digits_loader, fit, with_output

REPO = Path(__file__).resolve().parents[2]
MODEL_CODES = {"init-loss", "loss-reduction", "output-activation", "batch-mixing", "input-independent", "not-learning"}


def test_children_and_arguments() -> None:
    pre = Preflight()
    titles = [c.title for c in pre.checks]
    assert titles == ["missing bias", "data", "initial loss", "output activation", "batch independence",
                      "input-independent baseline", "overfit one batch"]  # cheap static checks first
    assert all(c._composed for c in pre.checks)
    assert Preflight(data=False, missing_bias=False, batch_mixing=False).checks[0].title == "initial loss"
    with pytest.raises(TypeError, match="Expected init_loss to be a bool"):
        Preflight(init_loss=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected budget_s to be a finite number > 0"):
        Preflight(budget_s=0.0)


def test_healthy_cnn_all_pass(make_trainer) -> None:
    pl.seed_everything(0)
    pre = Preflight()
    fit(make_trainer, Classifier(small_cnn()), DigitsDataModule(batch_size=64).train_dataloader(), pre)
    assert [line.status for line in pre.card] == ["pass"] * 7
    assert not [f for f in pre.findings if f.severity.value != "info"]
    assert all(line.detail for line in pre.card)


def test_planted_bugs_reach_the_composite_findings(make_trainer) -> None:
    pre = Preflight(data=False)
    fit(make_trainer, Classifier(with_output(big_init(ReshapeMixer()), nn.Softmax(1))), digits_loader(), pre)
    found = {f.code for f in pre.findings}
    assert {"batch-mixing", "output-activation"} <= found
    assert {line.check: line.status for line in pre.card}["batch independence"] == "finding"
    # the end-of-fit summary sees them: Preflight is the trainer's TipCallback
    assert found <= MODEL_CODES


def test_time_limit_is_one_skipped_line_naming_the_argument(make_trainer) -> None:
    pre = Preflight(data=False, budget_s=1e-4)
    fit(make_trainer, Classifier(small_cnn()), digits_loader(), pre)
    assert [line.status for line in pre.card] == ["skipped"] * 6  # spent before the first check could start
    (f,) = pre.findings  # one line, not one per check
    assert f.skipped and f.severity.value == "info" and not f.advice and f.format() == f"[{f.code}] info: {f.message}"
    assert f.message == ("the pre-flight time limit (`budget_s`=0.0001s) was reached; not run: missing bias, initial "
                         "loss, output activation, batch independence, input-independent baseline, overfit one batch")
    assert all(line.detail == "not run: time limit `budget_s`=0.0001s" for line in pre.card)


def test_time_limit_in_recipe_names_preflight_budget_s(make_trainer) -> None:
    from lightning_tips.recipe import Recipe

    recipe = Recipe(preflight_budget_s=1e-4, gradients=False, activations=False)
    trainer = make_trainer(limit_train_batches=1, limit_val_batches=0, callbacks=[recipe])
    trainer.fit(Classifier(small_cnn()), train_dataloaders=digits_loader())
    limit = [f for f in recipe.findings if "time limit" in f.message]
    assert len(limit) == 1 and "`preflight_budget_s`=0.0001s" in limit[0].message, [f.format() for f in limit]


class _Sleepy(nn.Module):
    """A network whose forward sleeps: a loaded machine, simulated."""

    def __init__(self, net: nn.Module, delay_s: float) -> None:
        super().__init__()
        self.net, self.delay_s = net, delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return self.net(x)


def test_time_limit_stops_a_running_check_in_one_line(make_trainer) -> None:
    pre = Preflight(data=False, missing_bias=False, init_loss=False, output_activation=False, batch_mixing=False,
                    input_independence=False, budget_s=0.3)
    fit(make_trainer, Classifier(_Sleepy(small_cnn(), 0.05)), digits_loader(), pre)  # 50 steps need >= 2.5 s
    assert [line.status for line in pre.card] == ["skipped"]
    (f,) = pre.findings
    assert f.skipped and not f.advice and "overfit one batch was stopped" in f.message
    assert "`budget_s`=0.3s" in f.message


def _card(make_trainer, delay_s: float) -> list[tuple[str, str, str]]:
    pl.seed_everything(0)
    pre = Preflight()
    fit(make_trainer, Classifier(_Sleepy(small_cnn(), delay_s)), digits_loader(), pre)
    return [(line.check, line.status, line.detail) for line in pre.card]


def test_card_is_the_same_on_a_loaded_machine(make_trainer) -> None:
    """A slow step (the forward sleeps 10 ms: ~3x a loaded 2-core machine) gives the same card, line for
    line and figure for figure, as a fast one: the work is planned in steps and samples, not seconds."""
    fast = _card(make_trainer, 0.0)
    slow = _card(make_trainer, 0.01)
    assert [s for _, s, _ in fast] == ["pass"] * 7
    assert slow == fast
    assert _card(make_trainer, 0.0) == fast  # and run to run


class _WideMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                                 nn.Linear(2048, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_large_model_gets_fewer_samples_then_fewer_steps(make_trainer) -> None:
    """~8.7 MFLOP per sample: the overfit copy gets 4 samples (not 16) and the input-independence copies 8 (not
    64), at full steps; the plan is a function of the counted FLOPs, not of the clock."""
    pre = Preflight(data=False, missing_bias=False, init_loss=False, output_activation=False, batch_mixing=False)
    fit(make_trainer, Classifier(_WideMLP()), digits_loader(), pre)
    assert pre.plan is not None
    assert pre.plan.flops_per_sample == 2 * (64 * 2048 + 2048 * 2048 + 2048 * 10)
    assert pre.plan.allowance(50, 16) == (50, 7)
    assert "in 50 steps" in pre.card[-1].detail, pre.card
    small = WorkPlan.for_model(Classifier(small_cnn()), next(iter(digits_loader())))
    assert small.allowance(50, 16) == (50, 16) and small.allowance(50, 64) == (50, 64)


def test_work_plan_allowance() -> None:
    plan = WorkPlan(parameters=1, flops_per_sample=1e9, batch=64)  # 3 GFLOP per sample-step
    assert plan.allowance(50, 16) == (10, 4)  # floors: never below 10 steps on 4 samples
    assert WorkPlan(1, 1e6, 64).allowance(50, 64) == (50, 64)
    assert WorkPlan(1, 1e8, 64).allowance(50, 64, min_samples=8) == (10, 8)


def test_no_optimizer_is_info(make_trainer) -> None:
    class NoOpt(Classifier):
        def configure_optimizers(self) -> None:  # type: ignore[override]
            return None

    pre = Preflight(data=False)
    fit(make_trainer, NoOpt(small_cnn()), digits_loader(), pre)
    # only the check that trains a copy needs the optimizer (input-independent compares forwards)
    skipped = {f.code for f in pre.findings if f.severity.value == "info" and "none of the model's parameters" in f.message}
    assert skipped == {"not-learning"}
    assert not [f for f in pre.findings if f.severity.value != "info"]


def test_pure_observer_bit_identical(make_trainer) -> None:
    """Same seed, deterministic: 10 steps with and without Preflight give identical weights and buffers."""

    def train(callbacks: list) -> dict[str, torch.Tensor]:
        pl.seed_everything(7)
        model = Classifier(bn_cnn(dropout=0.3))
        trainer = make_trainer(limit_train_batches=10, limit_val_batches=0, deterministic=True, callbacks=callbacks)
        trainer.fit(model, train_dataloaders=digits_loader(n=640, batch_size=32))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    with_pre = train([Preflight()])
    without = train([])
    assert with_pre.keys() == without.keys()
    assert all(torch.equal(with_pre[k], without[k]) for k in without), [
        k for k in without if not torch.equal(with_pre[k], without[k])]


def test_real_model_untouched_by_checks(make_trainer) -> None:
    """Run the checks directly on a model: its weights, modes, grads and BN statistics stay as they were."""
    model = Classifier(bn_cnn(dropout=0.3))
    trainer = make_trainer(limit_train_batches=1, limit_val_batches=0, max_epochs=1)
    trainer.fit(model, train_dataloaders=digits_loader())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    batch = first_train_batch(trainer, model)
    pre = Preflight(data=False)
    lines = run_preflight(trainer, model, pre.checks, 10.0, batch)
    assert [line.status for line in lines] == ["pass"] * 6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is not None and bool((p.grad == 0.5).all()) for p in model.parameters())


def test_resume_does_not_rerun_and_keeps_findings(make_trainer, tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    pre = Preflight(data=False)
    model = Classifier(big_init(small_cnn(), 300.0))  # initial loss 20-95 whatever the seed (30: 3-10)
    fit(make_trainer, model, digits_loader(), pre, enable_checkpointing=True, callbacks=[pre, ckpt])
    assert "init-loss" in {f.code for f in pre.findings}
    state = pre.state_dict()
    assert state["done"] is True and len(state["children"]) == 6

    pre2 = Preflight(data=False)
    trainer = make_trainer(limit_train_batches=2, limit_val_batches=0, max_epochs=2, enable_checkpointing=True,
                           callbacks=[pre2, ModelCheckpoint(dirpath=tmp_path)])
    trainer.fit(Classifier(small_cnn()), train_dataloaders=digits_loader(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert pre2.card == []  # not re-run on resume
    assert "init-loss" in {f.code for f in pre2.findings}  # restored with the composite's state


def test_single_check_runs_alone(make_trainer) -> None:
    from lightning_tips.checks.batch_mixing import BatchMixingCheck

    check: PreflightCheck = BatchMixingCheck()
    fit(make_trainer, Classifier(ReshapeMixer()), digits_loader(), check)
    assert check._done and [f.code for f in check.findings] == ["batch-mixing"]


@pytest.mark.ddp
def test_ddp_ranks_agree(tmp_path: Path) -> None:
    """Rank 1's targets are unnormalised, rank 0's are not: both ranks report init-loss, nobody hangs."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "PL_GLOBAL_SEED")}
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "ranks.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests/helpers/preflight_models.py"), "ddp", str(out)],
                          cwd=REPO, env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    for r in ranks:
        assert "init-loss" in r["codes"], r
        assert r["card"] == ranks[0]["card"]


def test_settle_agreed_reports_every_global_verdict_without_collectives(make_trainer, monkeypatch) -> None:
    """``settle(agreed=True)``: verdicts already the same on every rank are reported as they are, in the
    order of the check's codes (several per code), without the per-code agreement; an ``info`` leaves
    the line ``pass``, a new warning makes it ``finding``, a measurement that raises ``skipped``."""
    from lightning_tips.checks import _preflight
    from lightning_tips.checks._preflight import Verdict, settle

    def no_agreement(*args: object) -> None:
        raise AssertionError("settle(agreed=True) must not agree across ranks")

    monkeypatch.setattr(_preflight, "_agreed", no_agreement)

    class Global(PreflightCheck):
        title = "global"
        code = "duplicate-data"
        codes = ("duplicate-data", "no-seed")

    trainer = make_trainer()
    check = Global()
    seed = Verdict("no-seed", "info", "no seed")
    with pytest.warns(Warning, match="no-seed"):
        assert settle(check, trainer, lambda: ([seed], "figures"), agreed=True).status == "pass"
    dups = [Verdict("duplicate-data", "warning", "within train", module="train"),
            Verdict("duplicate-data", "warning", "train/val", module="train/val")]
    check = Global()
    with pytest.warns(Warning):
        line = settle(check, trainer, lambda: ([seed, *dups], "figures"), agreed=True)
    assert (line.check, line.status, line.detail) == ("global", "finding", "figures")
    assert [(f.code, f.module) for f in check.findings] == [
        ("duplicate-data", "train"), ("duplicate-data", "train/val"), ("no-seed", None)]

    def broken() -> tuple[list[Verdict], str]:
        raise RuntimeError("boom")

    check = Global()
    with pytest.warns(Warning):
        line = settle(check, trainer, broken, agreed=True)
    assert (line.status, line.detail) == ("skipped", "RuntimeError: boom")
    (f,) = check.findings
    assert f.skipped and "could not run on this model (RuntimeError: boom)" in f.message


def test_data_checks_declare_every_code_they_report() -> None:
    """settle reports a check's verdicts code by code: every code DataChecks builds a Verdict with is
    in its ``codes``."""
    import re

    from lightning_tips.checks import data

    built = set(re.findall(r'Verdict\(\s*"([a-z-]+)"', Path(data.__file__).read_text()))
    assert built and built <= set(data.DataChecks.codes), built - set(data.DataChecks.codes)
    assert data.DataChecks.code in data.DataChecks.codes

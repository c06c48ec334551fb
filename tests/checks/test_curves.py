"""LearningCurves: overfitting / not-learning verdicts through real fits, the chart and scalars in
every logger, accuracy two ways, checkpoint round-trip, bad inputs, and pure observation."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_tips import TipWarning
from lightning_tips._loggers import files_dir
from lightning_tips.checks.curves import (
    HISTORY_KEYS,
    LearningCurves,
    _correct,
    _logits_and_targets,
    render_learning_curves,
)
from tests.helpers.curves_models import (
    DetachedClassifier,
    LogitsClassifier,
    NoValLossClassifier,
    big_mlp,
    noisy_digits_loaders,
)
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit
from tests.helpers.models import Classifier, ManualClassifier, mlp

MakeTrainer = Callable[..., pl.Trainer]


def codes(cb: LearningCurves, severity: str | None = None) -> list[str]:
    return [f.code for f in cb.findings if severity is None or f.severity.value == severity]


def digits(**kwargs: object) -> DigitsDataModule:
    return DigitsDataModule(image=False, **kwargs)  # type: ignore[arg-type]


# --- pure functions --------------------------------------------------------------------------------
def test_render_adds_accuracy_panel_only_when_accuracy_exists() -> None:
    loss_only = {"epoch": [1.0, 2.0], "train_loss": [1.0, 0.5], "val_loss": [1.2, float("nan")],
                 "train_acc": [float("nan")] * 2, "val_acc": [float("nan")] * 2}
    with_acc = {**loss_only, "val_acc": [0.3, 0.6]}
    a, b = render_learning_curves(loss_only), render_learning_curves(with_acc)
    assert a.dtype.name == b.dtype.name == "uint8"
    assert a.shape[2] == b.shape[2] == 3
    assert b.shape[1] > a.shape[1]  # a second panel makes the chart wider
    assert a.std() > 0  # something was drawn


def test_logits_and_targets_reads_shapes_only() -> None:
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert _logits_and_targets({"loss": torch.tensor(1.0), "logits": logits}, (torch.zeros(4, 2), y)) is not None
    assert _logits_and_targets({"loss": torch.tensor(1.0), "logits": logits, "y": y}, None) is not None
    assert _logits_and_targets({"loss": torch.tensor(1.0)}, (torch.zeros(4, 2), y)) is None  # no logits
    assert _logits_and_targets(torch.tensor(1.0), (torch.zeros(4, 2), y)) is None  # a bare loss
    assert _logits_and_targets({"logits": logits}, (torch.zeros(4, 2), y[:3])) is None  # batch mismatch
    assert _logits_and_targets({"logits": logits}, (torch.zeros(4, 2), y.float())) is None  # float multiclass target
    assert _logits_and_targets({"logits": torch.randn(4, 1)}, (torch.zeros(4, 2), torch.ones(4))) is not None


def test_correct_matches_argmax_and_sign() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert _correct(logits, torch.tensor([0, 1, 1])).tolist() == [1, 1, 0]
    assert _correct(torch.tensor([1.5, -0.2, 0.3]), torch.tensor([1.0, 0.0, 0.0])).tolist() == [1, 1, 0]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"patience": 0}, ValueError), ({"min_points": 1}, ValueError), ({"patience": 2.5}, ValueError),
     ({"val_loss_key": ""}, ValueError), ({"val_loss_key": 5}, TypeError)],
)
def test_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match="Expected"):
        LearningCurves(**kwargs)


# --- planted bugs and healthy twins ----------------------------------------------------------------
def test_overfitting_planted_and_png_without_logger(make_trainer: MakeTrainer) -> None:
    """A big MLP on 40 digits with 40% wrong labels, 12 epochs, no regularisation: val loss turns up."""
    pl.seed_everything(0)
    train, val = noisy_digits_loaders()
    cb = LearningCurves(patience=3)
    trainer = make_trainer(max_epochs=12, callbacks=[cb])
    with pytest.warns(TipWarning, match=r"\[overfitting\] warning"):
        trainer.fit(Classifier(big_mlp(), lr=3e-3), train, val)
    assert codes(cb, "warning") == ["overfitting"]
    f = cb.findings[0]
    assert f.figures["val_now"] > f.figures["best_val"] and f.figures["train_now"] < f.figures["train_at_best"]
    assert len(cb.history["val_loss"]) == 12  # one point per epoch, the sanity check not counted
    pngs = sorted(files_dir(trainer).glob("tips_learning_curves_step*.png"))
    assert len(pngs) == 12
    scalars = (files_dir(trainer) / "scalars.csv").read_text()
    for key in ("train_loss", "val_loss", "val_acc"):
        assert f"tips/curves/{key}" in scalars


def test_healthy_twin_no_findings_and_tensorboard(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    """Plenty of digits, a small MLP, a good lr: train and val loss both fall — no finding."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0)
    cb = LearningCurves(patience=3)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(max_epochs=5, limit_train_batches=8, callbacks=[cb], logger=logger)
    trainer.fit(Classifier(mlp(64, 10, hidden=32), lr=1e-2), datamodule=digits())
    assert cb.findings == []
    val = cb.history["val_loss"]
    assert val[-1] < val[0] and all(math.isfinite(v) for v in val)
    assert not math.isnan(cb.history["val_acc"][-1])  # read from the logged `val_acc`
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert "tips/learning_curves" in acc.Tags()["images"]
    assert len(acc.Images("tips/learning_curves")) == 5
    for key in ("train_loss", "val_loss", "val_acc"):
        assert f"tips/curves/{key}" in acc.Tags()["scalars"]
    assert [round(e.value, 5) for e in acc.Scalars("tips/curves/val_loss")] == [round(v, 5) for v in val]


def test_not_learning_planted_csv_logger(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    """A `.detach()` in forward: only a bias learns, the training loss stays flat."""
    pl.seed_everything(0)
    cb = LearningCurves(min_points=3)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(max_epochs=3, limit_train_batches=8, limit_val_batches=2, callbacks=[cb], logger=logger)
    with pytest.warns(TipWarning, match=r"\[not-learning\] warning"):
        trainer.fit(DetachedClassifier(mlp(64, 10, hidden=32), lr=1e-3), datamodule=digits())
    assert codes(cb, "warning") == ["not-learning"]
    assert cb.findings[0].figures["ratio"] > 0.98
    pngs = sorted((Path(logger.log_dir) / "tips").glob("tips_learning_curves_step*.png"))
    assert len(pngs) == 3


def test_not_learning_healthy_twin(make_trainer: MakeTrainer) -> None:
    """The same data and loop without the `.detach()`: the loss falls."""
    pl.seed_everything(0)
    cb = LearningCurves(min_points=3)
    trainer = make_trainer(max_epochs=3, limit_train_batches=8, limit_val_batches=2, callbacks=[cb])
    trainer.fit(Classifier(mlp(64, 10, hidden=32), lr=1e-2), datamodule=digits())
    assert "not-learning" not in codes(cb)
    assert cb.history["train_loss"][-1] < 0.98 * cb.history["train_loss"][0]


# --- what the curve measures -------------------------------------------------------------------------
def test_accuracy_and_losses_from_returned_logits(make_trainer: MakeTrainer) -> None:
    """Way 1: the steps return {"loss", "logits"}; the curve computes val loss and both accuracies
    itself, matching the model's own logged values; gradient accumulation does not scale the loss."""
    pl.seed_everything(0)
    cb = LearningCurves(val_loss_key="not_logged", val_acc_key="not_logged_either")
    trainer = make_trainer(
        max_epochs=2, limit_train_batches=8, limit_val_batches=4, accumulate_grad_batches=2, callbacks=[cb]
    )
    trainer.fit(LogitsClassifier(mlp(64, 10, hidden=32), lr=1e-2), datamodule=digits(val_limit=256))
    metrics = trainer.callback_metrics
    assert cb.history["val_loss"][-1] == pytest.approx(metrics["val_loss_logged"].item(), rel=1e-5)
    assert cb.history["val_acc"][-1] == pytest.approx(metrics["val_acc_logged"].item(), abs=1e-6)
    assert cb.history["train_loss"][-1] == pytest.approx(metrics["train_loss"].item(), rel=1e-5)
    assert 0.0 <= cb.history["train_acc"][-1] <= 1.0
    assert cb.findings == []


def test_no_validation_loop_draws_train_curve_only(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    cb = LearningCurves()
    trainer = make_trainer(max_epochs=2, limit_train_batches=4, callbacks=[cb])
    trainer.fit(Classifier(mlp(64, 10, hidden=32), lr=1e-2), digits().train_dataloader())
    assert len(cb.history["train_loss"]) == 2
    assert all(math.isnan(v) for v in cb.history["val_loss"])
    assert [(f.code, f.severity.value) for f in cb.findings] == [("overfitting", "info")]
    assert "no validation loop" in cb.findings[0].message
    assert len(list(files_dir(trainer).glob("tips_learning_curves_step*.png"))) == 2


def test_validation_without_loss_reports_info(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    cb = LearningCurves()
    trainer = make_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[cb])
    trainer.fit(NoValLossClassifier(mlp(64, 10, hidden=32), lr=1e-2), datamodule=digits())
    assert [(f.code, f.severity.value) for f in cb.findings] == [("overfitting", "info")]
    assert "no validation loss" in cb.findings[0].message
    assert all(math.isnan(v) for v in cb.history["val_loss"])


def test_manual_optimization_without_loss_reports_info(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    cb = LearningCurves()
    trainer = make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, callbacks=[cb])
    trainer.fit(ManualClassifier(mlp(64, 10, hidden=32)), datamodule=digits())
    assert [(f.code, f.severity.value) for f in cb.findings] == [("not-learning", "info")]
    assert math.isfinite(cb.history["val_loss"][0])  # the validation curve still works


def test_one_point_per_validation_check(make_trainer: MakeTrainer) -> None:
    """val_check_interval=0.5: two points per epoch, each with the mean training loss since the last."""
    pl.seed_everything(0)
    cb = LearningCurves()
    trainer = make_trainer(max_epochs=2, limit_train_batches=8, limit_val_batches=1, val_check_interval=0.5,
                           callbacks=[cb])
    trainer.fit(Classifier(mlp(64, 10, hidden=32), lr=1e-2), datamodule=digits())
    assert cb.history["epoch"] == [0.5, 1.0, 1.5, 2.0]
    assert cb.history["step"] == [4.0, 8.0, 12.0, 16.0]
    assert all(math.isfinite(v) for k in ("train_loss", "val_loss") for v in cb.history[k])


@pytest.mark.parametrize(("every", "drawn_at"), [(None, [8, 16, 24]), (0, [8, 24]), (12, [8, 24]), (10_000, [8, 24])])
def test_chart_period_bounds_the_drawing_and_the_end_is_always_drawn(
    make_trainer: MakeTrainer, every: int | None, drawn_at: list[int]
) -> None:
    """image_every_n_steps bounds the ~0.1 s chart renders; the first point and the last (at train end) are always drawn."""
    pl.seed_everything(0)
    cb = LearningCurves(image_every_n_steps=every)
    trainer = make_trainer(max_epochs=3, limit_train_batches=8, limit_val_batches=1, callbacks=[cb])
    trainer.fit(Classifier(mlp(64, 10, hidden=32), lr=1e-2), datamodule=digits())
    pngs = sorted(files_dir(trainer).glob("tips_learning_curves_step*.png"))
    assert [int(p.stem.rsplit("step", 1)[1]) for p in pngs] == drawn_at
    assert len(cb.history["step"]) == 3


def test_lightning_cli_can_build_it() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(LearningCurves, "curves")
    cfg = parser.parse_args(["--curves.patience=5", "--curves.val_loss_key=valid/loss"])
    cb = parser.instantiate_classes(cfg).curves
    assert (cb.patience, cb.min_points, cb.val_loss_key) == (5, 3, "valid/loss")


# --- state -------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_continues_history_without_duplicates(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    pl.seed_everything(0)
    kwargs = {"limit_train_batches": 4, "limit_val_batches": 1, "enable_checkpointing": True}
    first = LearningCurves()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(max_epochs=3, callbacks=[first, ckpt], **kwargs)
    with pytest.warns(TipWarning, match=r"\[not-learning\]"):
        trainer.fit(DetachedClassifier(mlp(64, 10, hidden=32)), datamodule=digits())
    assert codes(first) == ["not-learning"]

    resumed = LearningCurves()
    trainer = make_trainer(max_epochs=5, callbacks=[resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DetachedClassifier(mlp(64, 10, hidden=32)), datamodule=digits(),
                    ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    for key in HISTORY_KEYS:
        assert len(resumed.history[key]) == 5
        assert resumed.history[key][:3] == pytest.approx(first.history[key][:3], nan_ok=True)
    assert resumed.history["epoch"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert codes(resumed) == ["not-learning"]  # restored, not reported again
    assert not [w for w in caught if issubclass(w.category, TipWarning)]


# --- pure observer -----------------------------------------------------------------------------------
def _fit_weights(make_trainer: MakeTrainer, callbacks: list) -> dict[str, torch.Tensor]:
    """Seed 7, 2 epochs of 4 train / 2 val batches; the final weights."""
    return fit(make_trainer, lambda: LogitsClassifier(mlp(64, 10, hidden=32), lr=1e-2), datamodule=digits(),
               callbacks=callbacks, seed=7, warns="pass", max_epochs=2, limit_train_batches=4, limit_val_batches=2,
               deterministic=True).weights()


def test_pure_observer(make_trainer: MakeTrainer) -> None:
    plain = _fit_weights(make_trainer, [])
    observed = _fit_weights(make_trainer, [LearningCurves()])
    assert plain.keys() == observed.keys()
    assert all(torch.equal(plain[k], observed[k]) for k in plain)


# --- DDP ---------------------------------------------------------------------------------------------
@pytest.mark.ddp
def test_ddp_curves_are_global_and_identical_on_both_ranks(tmp_path: Path) -> None:
    """2 gloo ranks on different shards: the curve's train/val loss and val accuracy are the global
    means (the mean of the ranks' own values, equal batch sizes), and both ranks hold the same history."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    drop = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "RANK",
            "PL_GLOBAL_SEED")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(repo)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.curves_models", str(tmp_path)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["history"] == r1["history"] and r0["codes"] == r1["codes"] == []
    assert r0["indices"] == r1["indices"] == list(range(6))
    h = r0["history"]
    assert len(h["train_loss"]) == 2
    for key, local in (("train_loss", "train_loss"), ("val_loss", "val_loss_logged"), ("val_acc", "val_acc_logged")):
        assert r0["local"][local] != r1["local"][local]  # the shards differ
        assert h[key][-1] == pytest.approx((r0["local"][local] + r1["local"][local]) / 2, rel=1e-5)
    assert (tmp_path / "tips" / "tips_fixed_batch_table.csv").exists()
    assert len(list((tmp_path / "tips").glob("tips_learning_curves_step*.png"))) == 2


class _EpochTrainAcc(pl.Callback):
    """What Lightning aggregates for `train_acc` (logged on_epoch) at each epoch end."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.values.append(float(trainer.callback_metrics["train_acc"]))


def test_train_accuracy_logged_on_epoch_lands_on_its_own_epoch(make_trainer: MakeTrainer) -> None:
    """At validation end an on_epoch train metric still holds the previous epoch's value; each point
    must carry its own epoch's accuracy, not the one before."""
    from examples.digits import DigitsCNN

    pl.seed_everything(0)
    cb, probe = LearningCurves(), _EpochTrainAcc()
    trainer = make_trainer(max_epochs=3, limit_train_batches=6, limit_val_batches=2, callbacks=[cb, probe])
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule(image=True))
    assert len(cb.history["train_acc"]) == 3 and len(probe.values) == 3
    assert cb.history["train_acc"] == pytest.approx(probe.values)


def test_logged_train_accuracy_is_written_once_per_point_equal_to_the_users(
    make_trainer: MakeTrainer, tmp_path: Path
) -> None:
    """#12: with the CSV logger `tips/curves/train_acc` was written twice per point (the previous epoch's
    value at validation, then the fresh one). One value per point, equal to the user's on-epoch `train_acc`."""
    import csv

    from examples.digits import DigitsCNN

    pl.seed_everything(0)
    cb = LearningCurves()
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(max_epochs=3, limit_train_batches=6, limit_val_batches=2, callbacks=[cb], logger=logger)
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule(image=True))
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    ours = [(int(r["step"]), float(r["tips/curves/train_acc"])) for r in rows if r.get("tips/curves/train_acc")]
    users = [float(r["train_acc"]) for r in rows if r.get("train_acc")]
    assert len(users) == 3
    assert [s for s, _ in ours] == [6, 12, 18]  # one row per point, no repeated step
    assert [v for _, v in ours] == pytest.approx(users, abs=1e-7)
    assert cb.history["train_acc"] == pytest.approx(users, abs=1e-7)
    assert len(set(users)) == 3  # the epochs differ: a stale value could not pass


# --- noise-aware, material verdicts, on scripted curves (#11 items 1 and 4) ------------------------------------
class ScriptedCurves(pl.LightningModule):
    """Logs the given per-epoch values: `train_loss` (returned from training_step), `val_loss`, `val_acc`
    (validation_step). One batch per epoch each; the parameter never changes (SGD at lr 0, zero gradient)."""

    def __init__(self, train: list[float], val: list[float], acc: list[float] | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_values, self.val_values, self.acc_values = train, val, acc

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        loss = torch.tensor(self.train_values[self.current_epoch]) + 0.0 * self.w.sum()
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: object, batch_idx: int) -> None:
        self.log("val_loss", self.val_values[self.current_epoch])
        if self.acc_values is not None:
            self.log("val_acc", self.acc_values[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _scripted_fit(make_trainer: MakeTrainer, train: list[float], val: list[float], acc: list[float] | None = None):
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_tips import EarlyStopping

    curves, stopper = LearningCurves(patience=3), EarlyStopping(patience=3, restore_best_weights=False)
    data = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4)
    trainer = make_trainer(max_epochs=len(val), callbacks=[curves, stopper], limit_train_batches=1,
                           limit_val_batches=1, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(ScriptedCurves(train, val, acc), data, data)
    assert curves.history["val_loss"] == pytest.approx(val)
    return [f for f in curves.findings if f.code == "overfitting"], [f for f in stopper.findings if f.code == "overfitting"]


FALLING = [1.2, 0.9, 0.7, 0.55, 0.45, 0.38, 0.33]


@pytest.mark.parametrize(
    ("val", "acc"),
    [
        ([0.70, 0.55, 0.4831, 0.4840, 0.4845, 0.4848], [0.70, 0.78, 0.80, 0.80, 0.81, 0.80]),  # +0.35%
        ([0.30, 0.16, 0.1145, 0.1150, 0.1153, 0.1156], [0.90, 0.95, 0.96, 0.96, 0.96, 0.97]),  # +1.0%
        ([0.35, 0.18, 0.1357, 0.1362, 0.1371, 0.1379], [0.90, 0.94, 0.95, 0.95, 0.96, 0.95]),  # +1.6%
        ([0.16, 0.13, 0.1113, 0.1150, 0.1190, 0.1229], [0.90, 0.95, 0.96, 0.96, 0.97, 0.96]),  # +10.4%, acc held
        ([0.70, 0.55, 0.4831, 0.4840, 0.4845, 0.4848], None),  # not material even without accuracy
    ],
    ids=["0.4831-0.4848", "0.1145-0.1156", "0.1357-0.1379", "0.1113-0.1229", "no-acc"],
)
def test_healthy_runs_quoted_in_the_issue_get_no_overfitting_warning(
    make_trainer: MakeTrainer, val: list[float], acc: list[float] | None
) -> None:
    """#11: 'rose from its best 0.4831 to 0.4848 over 3 checks' and the like were warnings on healthy runs."""
    curves, stopper = _scripted_fit(make_trainer, FALLING[: len(val)], val, acc)
    for f in curves + stopper:
        assert f.severity.value == "info", f.format()
    if val[-1] / min(val) - 1 < 0.10:  # not material: nothing at all
        assert curves == [] and stopper == []
    else:  # material, but the accuracy did not fall: an info that says so
        assert len(curves) == 1 and len(stopper) == 1
        assert "accuracy did not fall" in curves[0].message and "accuracy did not fall" in stopper[0].message


def test_a_material_rise_with_falling_accuracy_is_a_warning_in_both(make_trainer: MakeTrainer) -> None:
    val = [0.70, 0.50, 0.40, 0.43, 0.46, 0.50]  # +25% over 3 checks, beyond the noise
    acc = [0.70, 0.80, 0.85, 0.84, 0.83, 0.82]
    curves, stopper = _scripted_fit(make_trainer, FALLING[:6], val, acc)
    # one problem, one warning: whichever callback reports it second keeps it as an "again" info
    assert sorted(f.severity.value for f in curves + stopper) == ["info", "warning"]
    assert [f.cause for f in curves + stopper if f.severity.value == "info"] == ["overfitting"]
    for f in (curves[0], stopper[0]):  # one decision function: the same figures
        assert f.figures["best_val"] == 0.4 and f.figures["val_now"] == 0.5 and f.figures["rise"] == 0.25
        assert f.figures["acc_at_best"] == 0.85 and f.figures["acc_now"] == 0.82
        assert "accuracy fell from 0.85 to 0.82" in f.message


def test_a_wobble_within_the_noise_is_no_finding(make_trainer: MakeTrainer) -> None:
    """A noisy val curve (small val set): the last rise is 12% of the best but within 3x the check-to-check noise."""
    val = [0.60, 0.45, 0.52, 0.40, 0.47, 0.43, 0.448]
    curves, stopper = _scripted_fit(make_trainer, FALLING[:7], val)
    assert curves == [] and stopper == []


def test_not_learning_is_suppressed_when_the_loss_is_nan(make_trainer: MakeTrainer) -> None:
    """A NaN loss is the root cause (the non-finite guard's): no separate not-learning warning."""
    nan = float("nan")
    cb = LearningCurves(min_points=3)
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4)
    trainer = make_trainer(max_epochs=5, callbacks=[cb], limit_train_batches=1, limit_val_batches=1,
                           num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(ScriptedCurves([2.30, 2.30, nan, 2.30, 2.30], [2.3] * 5), data, data)
    assert "not-learning" not in codes(cb)


@pytest.mark.parametrize(
    ("train", "expected"),
    [([2.30, 2.300, 2.299, 2.300], "warning"),  # flat
     ([2.30, 2.285, 2.270, 2.262], "info"),  # -1.7%: learns, slowly, beyond the noise
     ([2.30, 2.10, 1.90, 1.70], None)],  # learns
)
def test_not_learning_severity_follows_the_evidence(make_trainer: MakeTrainer, train: list[float], expected: str | None) -> None:
    cb = LearningCurves(min_points=3)
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4)
    trainer = make_trainer(max_epochs=len(train), callbacks=[cb], limit_train_batches=1, limit_val_batches=1,
                           num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(ScriptedCurves(train, [1.0] * len(train)), data, data)
    found = [f.severity.value for f in cb.findings if f.code == "not-learning"]
    assert found == ([] if expected is None else [expected])

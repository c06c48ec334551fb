"""EarlyStopping (R4.9): Lightning's, plus best-weight restore, the `overfitting` finding, and checkpoint state."""

from __future__ import annotations

import pickle

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

from lightning_tips import TipCallback
from lightning_tips.fixes.early_stopping import EarlyStopping, best_weights_copy
from tests.helpers.data import DigitsDataModule
from tests.helpers.loop_models import ValidationRecorder, wide_mlp
from tests.helpers.models import Classifier, mlp


def _overfit(make_trainer, es: EarlyStopping, *callbacks: Callback, max_epochs: int = 40, **kwargs):
    """Planted bug: 40 training digits, a 512-wide unregularised MLP, many epochs — val loss is best at epoch ~3."""
    pl.seed_everything(0)
    model = Classifier(wide_mlp(hidden=512), lr=3e-3)
    trainer = make_trainer(callbacks=[es, *callbacks], max_epochs=max_epochs, **kwargs)
    trainer.fit(model, DigitsDataModule(batch_size=20, limit=40))
    return trainer, model


def _healthy(make_trainer, es: EarlyStopping, *callbacks: Callback, max_epochs: int = 4, **kwargs):
    """Healthy twin: all 1500 training digits, a small MLP, few epochs — the validation loss keeps falling."""
    pl.seed_everything(0)
    model = Classifier(mlp(hidden=32), lr=1e-3)
    trainer = make_trainer(callbacks=[es, *callbacks], max_epochs=max_epochs, **kwargs)
    trainer.fit(model, DigitsDataModule(batch_size=64))
    return trainer, model


def test_is_lightning_early_stopping_and_tip_callback():
    es = EarlyStopping()
    assert isinstance(es, LightningEarlyStopping) and isinstance(es, TipCallback)
    assert (es.monitor, es.patience, es.mode, es.restore_best_weights) == ("val_loss", 3, "min", True)
    assert es.findings == []
    assert EarlyStopping(monitor="val_acc", mode="max").state_key != es.state_key
    assert pickle.loads(pickle.dumps(es)).monitor == "val_loss"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"mode": "median"}, ValueError), ({"patience": 0}, ValueError), ({"train_loss_key": ""}, ValueError),
     ({"train_loss_key": None}, TypeError), ({"min_delta": "abc"}, TypeError), ({"monitor": None}, TypeError),
     ({"monitor": -5}, TypeError), ({"strict": "abc"}, TypeError)],
)
def test_bad_arguments(kwargs, error):
    (name,) = kwargs
    with pytest.raises(error, match=f"Expected {name} "):
        EarlyStopping(**kwargs)


def test_best_weights_copy_is_detached_cpu_clone():
    layer = torch.nn.BatchNorm1d(3)
    copy = best_weights_copy(layer)
    assert set(copy) == set(layer.state_dict())  # buffers included
    layer.weight.data.fill_(7.0)
    assert torch.equal(copy["weight"], torch.ones(3))


def test_overfitting_found_and_best_weights_restored(make_trainer):
    es, rec = EarlyStopping(), ValidationRecorder()
    trainer, model = _overfit(make_trainer, es, rec)
    # it stopped early, and the finding says why
    assert trainer.current_epoch < 39 and es.stopped_epoch > 0
    [finding] = es.findings
    assert finding.code == "overfitting" and finding.severity.value == "warning"
    assert finding.figures["checks_since_best"] >= 3
    assert finding.figures["val_now"] > finding.figures["best_val"]
    assert finding.figures["train_now"] < finding.figures["train_at_best"]
    assert "R4.7" in finding.advice and "R4.8" in finding.advice
    # the model ends with the weights of the best validation check, bit for bit
    val = [m["val_loss"] for m in rec.metrics]
    best = min(range(len(val)), key=val.__getitem__)
    assert best < len(val) - 1  # the last weights are not the best: restoring matters
    assert es.best_epoch == best
    final = model.state_dict()
    assert all(torch.equal(final[k], rec.weights[best][k]) for k in final)
    assert not torch.equal(final["net.1.weight"], rec.weights[-1]["net.1.weight"])
    assert finding.format().startswith("[overfitting] warning:")


def test_summary_lists_its_findings(make_trainer, capsys):
    _overfit(make_trainer, EarlyStopping())
    out = capsys.readouterr().out
    assert "lightning_tips: 1 finding(s)" in out and "overfitting" in out


def test_healthy_run_no_overfitting_and_last_weights_kept(make_trainer):
    es, rec = EarlyStopping(), ValidationRecorder()
    trainer, model = _healthy(make_trainer, es, rec)
    assert es.findings == []
    assert es.stopped_epoch == 0 and trainer.current_epoch == 4
    val = [m["val_loss"] for m in rec.metrics]
    assert val == sorted(val, reverse=True)  # still improving: the best weights are the last ones
    assert all(torch.equal(v, rec.weights[-1][k]) for k, v in model.state_dict().items())


def test_no_restore_keeps_last_weights_and_state_has_no_weights(make_trainer):
    es, rec = EarlyStopping(restore_best_weights=False), ValidationRecorder()
    _, model = _overfit(make_trainer, es, rec)
    assert es.best_weights is None and "best_weights" not in es.state_dict()
    assert all(torch.equal(v, rec.weights[-1][k]) for k, v in model.state_dict().items())
    assert [f.code for f in es.findings] == ["overfitting"]  # the verdict does not need the weights


def test_missing_train_loss_key_is_one_info_finding(make_trainer):
    es = EarlyStopping(train_loss_key="loss_not_logged")
    _overfit(make_trainer, es, max_epochs=12)
    [finding] = es.findings
    assert finding.severity.value == "info" and "loss_not_logged" in finding.message
    assert "train_loss" in finding.message  # lists what is available


def test_mode_max_on_accuracy(make_trainer):
    es, rec = EarlyStopping(monitor="val_acc", mode="max", patience=3), ValidationRecorder(("val_acc",))
    _, model = _overfit(make_trainer, es, rec)
    acc = [m["val_acc"] for m in rec.metrics]
    best = max(range(len(acc)), key=acc.__getitem__)
    assert all(torch.equal(v, rec.weights[best][k]) for k, v in model.state_dict().items())
    for f in es.findings:  # if it fires, the figures are accuracies (higher is better), not negated
        assert f.figures["best_val"] > 0


class _Probe(Callback):
    """Reads the EarlyStopping's counters right after a resume restored them."""

    def __init__(self, es: EarlyStopping) -> None:
        self.es = es
        self.seen: dict = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen = {
            "wait_count": self.es.wait_count,
            "best_score": float(self.es.best_score),
            "val_history": list(self.es._val_history),
            "best_epoch": self.es.best_epoch,
            "has_weights": self.es.best_weights is not None,
        }


def test_resume_round_trip_keeps_counters(make_trainer, tmp_path):
    es = EarlyStopping(patience=10)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _overfit(make_trainer, es, ckpt, max_epochs=8, enable_checkpointing=True)
    state = es.state_dict()
    assert len(state["val_history"]) == 8 and state["wait_count"] >= 1 and "best_weights" in state

    resumed = EarlyStopping(patience=10)
    probe = _Probe(resumed)
    pl.seed_everything(0)
    trainer = make_trainer(callbacks=[resumed, probe], max_epochs=10)
    model = Classifier(wide_mlp(hidden=512), lr=3e-3)
    trainer.fit(model, DigitsDataModule(batch_size=20, limit=40), ckpt_path=ckpt.last_model_path)
    assert probe.seen["wait_count"] == state["wait_count"]
    assert probe.seen["best_score"] == float(state["best_score"])
    assert probe.seen["val_history"] == state["val_history"]
    assert probe.seen["best_epoch"] == state["best_epoch"] and probe.seen["has_weights"]
    assert len(resumed._val_history) == 10  # 8 restored + 2 new checks
    # the overfitting finding of the first run was restored with the state
    assert [f.code for f in resumed.findings][:1] == [f["code"] for f in state["findings"]][:1]


# --- a monitor that is not available: no validation loop, several validation loaders (#10 item 5) -----------
class _NoValidation(Classifier):
    """The classifier without a validation loop."""

    validation_step = None  # type: ignore[assignment]  # Lightning: not overridden


class _TwoValLoaders(Classifier):
    """Logs `val_loss` from two validation loaders: Lightning names them `val_loss/dataloader_idx_{0,1}`."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):  # type: ignore[override]
        x, y = batch
        self.log("val_loss", self.loss_fn(self(x), y))


class _Steps(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


def _two_loader_fit(make_trainer, cb, max_epochs=3):
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    model = _TwoValLoaders(mlp(hidden=32))
    trainer = make_trainer(callbacks=[cb], max_epochs=max_epochs, limit_train_batches=4)
    val = dm.val_dataloader()
    trainer.fit(model, dm.train_dataloader(), [val, val])
    return trainer


@pytest.mark.parametrize("how", ["no validation_step", "limit_val_batches=0"])
def test_recipe_without_validation_loop_is_an_info_not_a_crash(make_trainer, how):
    """`Recipe(early_stopping=True)` used to crash after a full epoch: 'Early stopping conditioned on metric
    `val_loss` which is not available'. Now the fit completes and one skipped info says why."""
    import lightning_tips as lt

    pl.seed_everything(0)
    model = _NoValidation(mlp(hidden=32)) if how == "no validation_step" else Classifier(mlp(hidden=32))
    recipe = lt.Recipe(early_stopping=True, preflight=False, every_n_steps=2)
    trainer = make_trainer(callbacks=[recipe], max_epochs=2, limit_train_batches=3,
                           **({"limit_val_batches": 0} if how != "no validation_step" else {}))
    trainer.fit(model, DigitsDataModule(batch_size=64))
    assert trainer.state.finished and trainer.global_step == 6
    [skip] = [f for f in recipe.findings if f.code == "overfitting" and f.module == "val_loss"]
    assert skip.severity.value == "info" and skip.skipped and skip.advice == ""
    assert "val_loss" in skip.message and "no validation loop" in skip.message
    assert ("validation_step" if how == "no validation_step" else "limit_val_batches=0") in skip.message


def test_recipe_with_a_metric_never_logged_is_an_info(make_trainer):
    import lightning_tips as lt

    pl.seed_everything(0)
    recipe = lt.Recipe(early_stopping=True, monitor="val_f1", preflight=False, every_n_steps=2)
    trainer = make_trainer(callbacks=[recipe], max_epochs=2, limit_train_batches=3)
    trainer.fit(Classifier(mlp(hidden=32)), DigitsDataModule(batch_size=64))
    assert trainer.state.finished
    [skip] = [f for f in recipe.findings if f.code == "overfitting" and f.module == "val_f1"]
    assert skip.skipped and "`val_f1`" in skip.message and "`val_loss`" in skip.message  # lists what is available


def test_standalone_strict_without_validation_loop_raises_at_setup(make_trainer):
    """Lightning's error is kept, but said before the first step, not after an epoch."""
    pl.seed_everything(0)
    steps = _Steps()
    trainer = make_trainer(callbacks=[EarlyStopping(), steps], max_epochs=2, limit_val_batches=0)
    with pytest.raises(RuntimeError, match="`val_loss` which is not available: this fit has no validation loop"):
        trainer.fit(Classifier(mlp(hidden=32)), DigitsDataModule(batch_size=64))
    assert steps.batches == 0


def test_standalone_non_strict_without_validation_loop_is_an_info(make_trainer):
    pl.seed_everything(0)
    es = EarlyStopping(strict=False)
    trainer = make_trainer(callbacks=[es], max_epochs=2, limit_train_batches=3)
    trainer.fit(_NoValidation(mlp(hidden=32)), DigitsDataModule(batch_size=64))
    assert trainer.state.finished and [f.skipped for f in es.findings] == [True]


@pytest.mark.parametrize("in_recipe", [False, True])
def test_two_validation_loaders_monitor_the_first(make_trainer, in_recipe):
    """`val_loss/dataloader_idx_0` is watched (and said once) instead of crashing on `val_loss`."""
    import lightning_tips as lt

    if in_recipe:
        cb = lt.Recipe(early_stopping=True, preflight=False, every_n_steps=2)
        es = cb.child(EarlyStopping)
    else:
        cb = es = EarlyStopping()
    trainer = _two_loader_fit(make_trainer, cb)
    assert trainer.state.finished and trainer.current_epoch == 3
    assert es.best_score is not None and torch.isfinite(torch.as_tensor(es.best_score))
    assert es.best_weights is not None and es.monitor == "val_loss"  # state_key unchanged
    notes = [f for f in cb.findings if f.code == "overfitting" and f.module == "val_loss"]
    assert len(notes) == 1 and "val_loss/dataloader_idx_0" in notes[0].message and not notes[0].skipped
    assert float(es.best_score) == pytest.approx(min(es._val_history))
    if in_recipe:  # the learning curves follow the same first loader
        curves = cb.child(lt.LearningCurves)
        assert curves.history["val_loss"] == pytest.approx(es._val_history)

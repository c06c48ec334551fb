"""SnapshotEnsemble (R6.1, T19): averaged predictions of the last k validation snapshots vs the single model."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_tips.fixes.snapshot import EnsembleResult, SnapshotEnsemble, evaluate_snapshots
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit
from tests.helpers.loop_models import DictOutputClassifier, ValidationRecorder
from tests.helpers.models import Classifier, mlp
from tests.helpers.probes import file_scalars


def _fit(make_trainer, *callbacks: Callback, model=None, max_epochs=4, **kwargs):
    """Seed 0, ``max_epochs`` of 8 train batches; ``model`` by default a fresh MLP classifier."""
    dm = DigitsDataModule(batch_size=64)
    run = fit(make_trainer, model or (lambda: Classifier(mlp(hidden=16), lr=3e-3)), dm, callbacks=callbacks,
              warns="pass", max_epochs=max_epochs, limit_train_batches=8, **kwargs)
    return run.trainer, run.model, dm


_scalars = file_scalars


def _reference_accuracy(weights: list[dict[str, torch.Tensor]], dm: DigitsDataModule) -> tuple[float, float]:
    """By hand: softmax of each snapshot, averaged, argmax vs labels; and the last snapshot alone."""
    model = Classifier(mlp(hidden=16)).eval()
    probs = []
    for w in weights:
        model.load_state_dict(w)
        with torch.no_grad():
            probs.append(torch.cat([model(x).softmax(1) for x, _ in dm.val_dataloader()]))
    y = torch.cat([y for _, y in dm.val_dataloader()])
    mean = sum(probs[1:], probs[0]) / len(probs)
    return (mean.argmax(1) == y).float().mean().item(), (probs[-1].argmax(1) == y).float().mean().item()


# --- pure function ---------------------------------------------------------------------------------
def _two_snapshots(net: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    first = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-0.5).add_(0.1)
    return [first, {k: v.clone() for k, v in net.state_dict().items()}]


def test_evaluate_snapshots_regression_is_mse_of_the_mean():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    snaps = _two_snapshots(net)
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    result = evaluate_snapshots(net, snaps, lambda: [(x[:6], y[:6]), (x[6:], y[6:])])
    outs = []
    for s in snaps:
        net.load_state_dict(s)
        outs.append(net(x).detach())
    expected_ens = ((outs[0] + outs[1]) / 2 - y).pow(2).mean().item()
    expected_single = (outs[1] - y).pow(2).mean().item()
    assert isinstance(result, EnsembleResult) and result.kind == "regression" and result.metric == "mse"
    assert result.ensemble == pytest.approx(expected_ens, rel=1e-6)
    assert result.single == pytest.approx(expected_single, rel=1e-6)


def test_evaluate_snapshots_binary_single_logit_is_sigmoid_average():
    torch.manual_seed(1)
    net = torch.nn.Linear(4, 1)
    snaps = _two_snapshots(net)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    result = evaluate_snapshots(net, snaps, lambda: [(x, y)])
    probs = []
    for s in snaps:
        net.load_state_dict(s)
        probs.append(net(x).detach().squeeze(1).sigmoid())
    expected = (((probs[0] + probs[1]) / 2 > 0.5).long() == y).float().mean().item()
    assert result.kind == "classification" and result.ensemble == pytest.approx(expected)


def test_evaluate_snapshots_reasons_instead_of_crashes():
    net = torch.nn.Linear(2, 3)
    snaps = _two_snapshots(net)
    assert "not (inputs, targets)" in evaluate_snapshots(net, snaps, lambda: [torch.randn(4, 2)])
    assert "no batches" in evaluate_snapshots(net, snaps, lambda: [])
    assert evaluate_snapshots(net, [], lambda: []) == "no snapshots"
    shuffled = iter([(torch.randn(4, 2), torch.tensor([0, 1, 2, 0])), (torch.randn(4, 2), torch.tensor([2, 2, 2, 2]))])
    assert "same batches" in evaluate_snapshots(net, snaps, lambda: [next(shuffled)])


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"k": 1}, "k"), ({"every_n_epochs": 0}, "every_n_epochs"), ({"max_batches": 0}, "max_batches")]
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SnapshotEnsemble(**kwargs)


# --- through Trainer.fit ---------------------------------------------------------------------------
def test_ensemble_figures_equal_hand_computed_reference(make_trainer, tmp_path):
    cb, rec = SnapshotEnsemble(k=3), ValidationRecorder(("val_loss", "val_acc"))
    _, _, dm = _fit(make_trainer, cb, rec)
    assert len(rec.weights) == 4 and len(cb._snapshots) == 3
    # evaluations after epochs 1, 2, 3 over snapshots [0, 1], [0, 1, 2], [1, 2, 3]
    refs = [_reference_accuracy(rec.weights[max(0, e - 2) : e + 1], dm) for e in (1, 2, 3)]
    scalars = _scalars(tmp_path)
    assert scalars["tips/ensemble_val_acc"] == pytest.approx([r[0] for r in refs], abs=1e-6)
    assert scalars["tips/single_val_acc"] == pytest.approx([r[1] for r in refs], abs=1e-6)
    # the single model's figure is the model's own val_acc at that epoch
    assert refs[-1][1] == pytest.approx(rec.metrics[-1]["val_acc"], abs=1e-6)
    first = cb.findings[0]
    assert first.code == "snapshot-ensemble" and first.severity.value == "info"
    assert first.figures["ensemble"] == pytest.approx(refs[0][0], abs=1e-6)
    assert first.figures["snapshots"] == 2 and first.figures["samples"] == 297
    assert cb.last_result is not None and cb.last_result.ensemble == pytest.approx(refs[-1][0], abs=1e-6)


def test_training_is_untouched(make_trainer):
    _, plain, _ = _fit(make_trainer, deterministic=True)
    modes = []

    class ModeProbe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(pl_module.training)

    cb = SnapshotEnsemble(k=2)
    _, with_cb, _ = _fit(make_trainer, cb, ModeProbe(), deterministic=True)
    assert cb.findings and all(modes)
    for a, b in zip(plain.parameters(), with_cb.parameters()):
        assert torch.equal(a, b)


def test_max_batches_bounds_the_evaluation(make_trainer):
    cb = SnapshotEnsemble(k=2, max_batches=2)
    _fit(make_trainer, cb, max_epochs=2)
    assert cb.findings[0].figures["samples"] == 128


def test_dict_outputs_are_skipped_with_info(make_trainer):
    cb = SnapshotEnsemble(k=2)
    _fit(make_trainer, cb, model=DictOutputClassifier(mlp(hidden=16)), max_epochs=3)
    [finding] = cb.findings
    assert finding.severity.value == "info" and "dict" in finding.message


def test_on_disk_keeps_k_files(make_trainer, tmp_path):
    cb = SnapshotEnsemble(k=2, on_disk=True)
    _fit(make_trainer, cb, max_epochs=4)
    files = sorted((tmp_path / "tips" / "snapshots").glob("*.pt"))
    assert len(files) == 2 and [e["path"] for e in cb._snapshots] == [str(f) for f in files]
    assert "weights" not in cb.state_dict()["snapshots"][0]
    assert len(cb.findings) >= 1


def test_state_round_trip(make_trainer, tmp_path):
    cb = SnapshotEnsemble(k=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _fit(make_trainer, cb, ckpt, max_epochs=2, enable_checkpointing=True)
    state = cb.state_dict()
    assert [e["epoch"] for e in state["snapshots"]] == [0, 1] and state["last_result"] is not None

    direct = SnapshotEnsemble(k=2)
    direct.load_state_dict(state)
    assert direct.last_result == cb.last_result
    assert all(torch.equal(direct._snapshots[1]["weights"][k], v) for k, v in state["snapshots"][1]["weights"].items())

    resumed = SnapshotEnsemble(k=2)
    pl.seed_everything(0)
    trainer = make_trainer(callbacks=[resumed], max_epochs=3, limit_train_batches=8)
    trainer.fit(Classifier(mlp(hidden=16), lr=3e-3), DigitsDataModule(batch_size=64), ckpt_path=ckpt.last_model_path)
    # the restored snapshot of epoch 1 was averaged with the new one of epoch 2
    assert [e["epoch"] for e in resumed._snapshots] == [1, 2]
    assert resumed.findings[0].figures == cb.findings[0].figures  # restored findings come first

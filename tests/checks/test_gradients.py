"""GradientStats: exploding RNN gradients and vanishing sigmoid stacks, with their healthy twins."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips.checks import gradients as gradients_mod
from lightning_tips.checks.gradients import (
    GradientStats,
    exploding_verdict,
    grad_norms,
    layer_grad_norms,
    layer_groups,
    vanishing_verdict,
)
from tests.helpers.data import digits_tensors
from tests.helpers.fitting import run_fit
from tests.helpers.models import Classifier, mlp
from tests.helpers.probes import SyncSpy
from tests.helpers.runtime_models import RNNClassifierNet, deep_mlp, sequence_loaders


def _digits_loader(n: int = 256, batch_size: int = 32) -> DataLoader:
    x, y = digits_tensors(image=False)
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch_size, shuffle=False)


# --- pure functions ------------------------------------------------------------------------------
def test_grad_norms_match_a_reference_and_accumulate_low_precision_in_float32() -> None:
    ts = [torch.randn(5, 3), torch.randn(7), (torch.ones(100) * 1000).half()]
    ref = torch.stack([t.double().norm() for t in ts]).float()
    got = grad_norms(ts)
    assert got.dtype == torch.float32 and torch.allclose(got, ref)
    assert math.isfinite(got[2].item())  # 1e4 > fp16 max if accumulated in fp16
    assert grad_norms([]).numel() == 0


def test_layer_groups_are_owners_of_weights_in_registration_order() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.RNN(8, 8), nn.Linear(8, 2))
    net[3].weight.requires_grad_(False)
    assert [n for n, _ in layer_groups(net)] == ["0", "2"]
    assert [n for n, _ in layer_groups(net, weights_only=False)] == ["0", "1", "2", "3"]


def test_layer_grad_norms_against_reference_and_skip_layers_without_grad() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    net[3](net[0](torch.randn(6, 4))).sum().backward()  # net[2] unused: no gradient
    names, norms = layer_grad_norms(net)
    assert names == ["0", "3"]
    assert torch.allclose(norms, torch.stack([net[0].weight.grad.norm(), net[3].weight.grad.norm()]))


def test_exploding_verdict() -> None:
    assert exploding_verdict([1.0, 2.0, 3.0, 150.0]) is None  # 150 < 100 x median 2
    v = exploding_verdict([1.0, 2.0, 3.0, 250.0])
    assert v is not None and (v.code, v.severity) == ("exploding-gradient", "warning") and v.figures["growth"] == 125.0
    assert "is 125x the median of the first 3 samples (2)" in v.message
    v = exploding_verdict([2e4])
    assert v is not None and v.figures == {
        "total_norm": 2e4, "baseline": pytest.approx(math.nan, nan_ok=True),
        "growth": pytest.approx(math.nan, nan_ok=True), "max_norm": 1e4, "total_norm_order": 1e4,
    }
    assert v.message == "total gradient norm 2e+04 passed max_norm=10000" and v.module is None
    assert exploding_verdict([1.0, 500.0]) is None  # no baseline yet, under max_norm
    assert exploding_verdict([1.0, 1.0, 1.0, math.inf]) is None  # non-finite: NonFiniteGuard's job


def test_vanishing_verdict() -> None:
    assert vanishing_verdict(["a", "b"], [1e-3, 1.0]) is None
    v = vanishing_verdict(["a", "b"], [1e-6, 1.0])
    assert v is not None and v.figures["ratio"] == pytest.approx(1e-6) and v.module == "a"
    assert (v.code, v.severity) == ("vanishing-gradient", "warning") and "barely learn" in v.message
    assert vanishing_verdict(["a", "b"], [0.5, 1.0, 0.0][:2]) is None
    assert vanishing_verdict(["a", "b", "c"], [0.5, 0.0, 1.0]) is not None  # a dead middle layer: floor
    assert vanishing_verdict([], []) is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Expected every_n_steps"):
        GradientStats(every_n_steps=-1)
    with pytest.raises(ValueError, match="Expected growth"):
        GradientStats(growth=0)
    with pytest.raises(ValueError, match="Expected history"):
        GradientStats(history=2)


# --- planted bugs and healthy twins --------------------------------------------------------------
def test_rnn_with_large_recurrent_init_explodes(make_trainer: Any) -> None:
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=2)
    trainer = make_trainer(callbacks=[stats], max_steps=4)
    msgs = run_fit(trainer, Classifier(RNNClassifierNet(recurrent_scale=4.0)), sequence_loaders())
    found = [f for f in stats.findings if f.code == "exploding-gradient"]
    assert found and found[0].step == 0 and found[0].severity.value == "warning"
    assert found[0].figures["total_norm_order"] >= 1e4 and "passed max_norm=10000" in found[0].message
    assert found[0].module == "net.rnn"  # the layer holding the largest norm
    assert any(m.startswith("[exploding-gradient] warning") for m in msgs)


def test_rnn_with_orthogonal_recurrent_init_is_silent(make_trainer: Any) -> None:
    """The twin. (Not gradient_clip_val: Lightning clips AFTER on_before_optimizer_step, so the
    callback sees the raw norms — clipping would not change what it measures.)"""
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=1)
    trainer = make_trainer(callbacks=[stats], max_steps=6, max_epochs=2)
    assert run_fit(trainer, Classifier(RNNClassifierNet(orthogonal_gain=0.9)), sequence_loaders()) == []
    assert len(stats.state_dict()["totals"]) == 6 and max(stats.state_dict()["totals"]) < 10


def test_growth_over_training_is_exploding(make_trainer: Any) -> None:
    """A model whose gradients grow 1000x after the first samples (planted by scaling the loss)."""

    class Growing(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return super().training_step(batch, batch_idx) * (1.0 if self.global_step < 6 else 1000.0)

    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=2, max_norm=1e9)
    trainer = make_trainer(callbacks=[stats], max_steps=8)
    run_fit(trainer, Growing(mlp(), optimizer="sgd", lr=1e-6), _digits_loader())
    [f] = stats.findings
    assert (f.code, f.step) == ("exploding-gradient", 6)
    assert "x the median of the first 3 samples" in f.message and f.figures["total_norm_order"] == 1000.0  # 429 rounds to 10**3


def test_deep_sigmoid_mlp_vanishes(make_trainer: Any) -> None:
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=2)
    trainer = make_trainer(callbacks=[stats], max_steps=6)
    run_fit(trainer, Classifier(deep_mlp(activation="sigmoid")), _digits_loader())
    [f] = stats.findings  # concluded on the third sampled step in a row (dense start: 0, 1, 2), not on step 0 alone
    assert (f.code, f.step, f.module) == ("vanishing-gradient", 2, "net.1")
    assert f.figures["ratio_order"] < 1e-4 and "barely learn" in f.message
    assert "on 3 sampled steps in a row (0, 1, 2)" in f.message


class _ZeroInitResNet(nn.Module):
    """Residual blocks whose last BatchNorm weight is zero (timm's ``zero_init_last``) and a zero-initialised
    head (torchvision's ViT): exactly-zero gradients on every earlier layer at step 0 — healthy practice."""

    def __init__(self, width: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width),
                          nn.BatchNorm1d(width))
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, 10)
        with torch.no_grad():
            for b in self.blocks:
                b[4].weight.zero_()
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x.flatten(1)))
        for b in self.blocks:
            h = torch.relu(h + b(h))
        return self.head(h)


def test_zero_initialised_residual_branches_and_head_are_silent(make_trainer: Any) -> None:
    pl.seed_everything(0)
    net = _ZeroInitResNet()
    # step 0 alone would be a verdict: every layer before the zero head gets exactly zero gradient
    x, y = next(iter(_digits_loader()))
    probe = _ZeroInitResNet()
    probe.load_state_dict(net.state_dict())
    torch.nn.functional.cross_entropy(probe(x), y).backward()
    names, norms = layer_grad_norms(probe)
    assert vanishing_verdict(names, norms.tolist()) is not None and norms[0] == 0
    stats = GradientStats(every_n_steps=1)
    trainer = make_trainer(callbacks=[stats], max_steps=6)
    assert run_fit(trainer, Classifier(net, lr=1e-2), _digits_loader()) == []
    assert stats.findings == [] and stats.state_dict()["count"] == 6


def test_deep_relu_he_mlp_is_silent(make_trainer: Any) -> None:
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=2)
    trainer = make_trainer(callbacks=[stats], max_steps=8)
    assert run_fit(trainer, Classifier(deep_mlp(activation="relu")), _digits_loader()) == []
    assert stats.findings == []


def test_frozen_layers_are_ignored(make_trainer: Any) -> None:
    pl.seed_everything(0)
    net = deep_mlp(depth=3, activation="relu")
    for p in net[1].parameters():  # freeze the first layer: its "zero" gradient is not vanishing
        p.requires_grad_(False)
    stats = GradientStats(every_n_steps=1)
    trainer = make_trainer(callbacks=[stats], max_steps=3)
    assert run_fit(trainer, Classifier(net), _digits_loader()) == []


# --- logging, cost, state ------------------------------------------------------------------------
def test_norms_are_logged_and_histograms_when_enabled(make_trainer: Any, tmp_path: Path) -> None:
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=2, log_histograms=True)
    trainer = make_trainer(callbacks=[stats], max_steps=4, logger=CSVLogger(tmp_path, name="run"), log_every_n_steps=1)
    run_fit(trainer, Classifier(mlp()), _digits_loader())
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "tips/grad_norm/total" in metrics and "tips/grad_norm/net.1" in metrics and "tips/grad_norm/net.5" in metrics
    hists = sorted(p.name for p in (Path(trainer.logger.log_dir) / "tips").glob("*histogram.csv"))
    assert hists == ["tips_grad_hist_net.1_histogram.csv", "tips_grad_hist_net.3_histogram.csv",
                     "tips_grad_hist_net.5_histogram.csv"]


def test_one_host_sync_per_sampled_step(make_trainer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = SyncSpy(monkeypatch, [gradients_mod.__file__])
    pl.seed_everything(0)
    trainer = make_trainer(callbacks=[spy, GradientStats(every_n_steps=3)], max_steps=8)
    run_fit(trainer, Classifier(mlp()), _digits_loader())
    assert spy.calls == [0, 1, 2, 3, 5, 6]  # every 3rd step and the dense start 0, 1, 2, 5


def test_pure_observer(make_trainer: Any) -> None:
    def run(callbacks: list[pl.Callback]) -> list[torch.Tensor]:
        pl.seed_everything(0)
        model = Classifier(mlp())
        trainer = make_trainer(callbacks=callbacks, max_steps=6, deterministic=True)
        run_fit(trainer, model, _digits_loader())
        return [p.detach().clone() for p in model.parameters()]

    plain, observed = run([]), run([GradientStats(every_n_steps=1, log_histograms=True)])
    assert all(torch.equal(a, b) for a, b in zip(plain, observed))


def test_history_round_trip_through_a_checkpoint(make_trainer: Any, tmp_path: Path) -> None:
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=6)
    trainer = make_trainer(callbacks=[stats, ckpt], max_steps=6, enable_checkpointing=True)
    run_fit(trainer, Classifier(mlp()), _digits_loader())
    first = stats.state_dict()
    assert first["steps"] == [0, 1, 2, 4, 5] and len(first["baseline"]) == 3 and first["count"] == 5

    resumed = GradientStats(every_n_steps=2)
    trainer = make_trainer(callbacks=[resumed], max_steps=10, max_epochs=2)
    run_fit(trainer, Classifier(mlp()), _digits_loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    state = resumed.state_dict()
    assert state["steps"] == [0, 1, 2, 4, 5, 6, 8] and state["baseline"] == first["baseline"] and state["count"] == 7
    assert state["totals"][:5] == first["totals"]


def test_history_is_bounded_but_the_baseline_is_kept(make_trainer: Any) -> None:
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=1, history=4)
    trainer = make_trainer(callbacks=[stats], max_steps=7)
    run_fit(trainer, Classifier(mlp()), _digits_loader())
    state = stats.state_dict()
    assert state["steps"] == [3, 4, 5, 6] and len(state["baseline"]) == 3 and state["count"] == 7


def test_several_optimizers_are_skipped_with_an_info(make_trainer: Any) -> None:
    class TwoOpt(Classifier):
        def __init__(self) -> None:
            super().__init__(mlp())
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            for opt in self.optimizers():  # type: ignore[union-attr]
                opt.zero_grad()
            self.manual_backward(loss)
            for opt in self.optimizers():  # type: ignore[union-attr]
                opt.step()
            return loss.detach()

        def configure_optimizers(self) -> Any:
            ps = list(self.parameters())
            return torch.optim.SGD(ps[:2], lr=0.1), torch.optim.SGD(ps[2:], lr=0.1)

    stats = GradientStats(every_n_steps=1)
    trainer = make_trainer(callbacks=[stats], max_steps=4)
    run_fit(trainer, TwoOpt(), _digits_loader())
    [f] = stats.findings
    assert (f.code, f.severity.value) == ("exploding-gradient", "info") and "2 optimizers" in f.message
    assert stats.state_dict()["totals"] == []


def test_a_model_without_weight_matrices_is_not_judged_per_layer(make_trainer: Any) -> None:
    class BiasOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shift = nn.Parameter(torch.zeros(10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :10] + self.shift

    stats = GradientStats(every_n_steps=1)
    trainer = make_trainer(callbacks=[stats], max_steps=3)
    assert run_fit(trainer, Classifier(BiasOnly()), _digits_loader()) == []
    assert len(stats.state_dict()["totals"]) == 3  # the total norm is still followed


def test_clipping_does_not_hide_the_raw_norms(make_trainer: Any) -> None:
    """Lightning clips after on_before_optimizer_step: the callback sees (and reports) the raw norms."""
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=2)
    trainer = make_trainer(callbacks=[stats], max_steps=2, gradient_clip_val=1.0)
    run_fit(trainer, Classifier(RNNClassifierNet(recurrent_scale=4.0)), sequence_loaders())
    assert stats.findings and all(f.code == "exploding-gradient" for f in stats.findings)  # steps 0 and 1
    assert "gradient_clip_val=1 bounds the update" in stats.findings[0].message


def test_gradient_histograms_only_on_their_own_period(make_trainer: Any) -> None:
    """histogram_every_n_steps=4 with every_n_steps=2: norms at 0, 1, 2, 4, 5, 6 (dense start); histograms at 0 and 4."""
    from lightning_tips._loggers import files_dir

    stats = GradientStats(every_n_steps=2, log_histograms=True, histogram_every_n_steps=4)
    trainer = make_trainer(callbacks=[stats], max_steps=8)
    run_fit(trainer, Classifier(mlp(64, 10)), _digits_loader())
    rows = (files_dir(trainer) / "tips_grad_hist_net.1_histogram.csv").read_text().splitlines()[1:]
    assert sorted({int(r.split(",")[0]) for r in rows}) == [0, 4]
    norms = (files_dir(trainer) / "scalars.csv").read_text()
    assert {int(line.split(",")[0]) for line in norms.splitlines()[1:] if "tips/grad_norm/total" in line} == {0, 1, 2, 4, 5, 6}
    with pytest.raises(ValueError, match="histogram_every_n_steps"):
        GradientStats(histogram_every_n_steps=-1)


@pytest.mark.parametrize(("period", "hist_steps"), [(None, {0, 1, 2, 4, 5}), (0, set())])
def test_histogram_period_none_follows_the_sampling_and_zero_is_never(
    make_trainer: Any, period: int | None, hist_steps: set[int]
) -> None:
    from lightning_tips._loggers import files_dir

    stats = GradientStats(every_n_steps=2, log_histograms=True, histogram_every_n_steps=period)
    trainer = make_trainer(callbacks=[stats], max_steps=6)
    run_fit(trainer, Classifier(mlp(64, 10)), _digits_loader())
    hist = files_dir(trainer) / "tips_grad_hist_net.1_histogram.csv"
    rows = hist.read_text().splitlines()[1:] if hist.exists() else []
    assert {int(r.split(",")[0]) for r in rows} == hist_steps


# --- dense early sampling (issue #12) --------------------------------------------------------------
@pytest.mark.parametrize(("lr", "explodes"), [(5.0, True), (0.05, False)], ids=["sgd-lr-5", "sgd-lr-0.05"])
def test_a_short_run_that_blows_up_early_is_caught(make_trainer: Any, lr: float, explodes: bool) -> None:
    """60 steps of SGD at lr 5.0: the default every_n_steps=100 alone would have sampled step 0 only."""
    pl.seed_everything(0)
    stats = GradientStats(every_n_steps=100)
    trainer = make_trainer(callbacks=[stats], max_steps=60, max_epochs=2)
    run_fit(trainer, Classifier(mlp(), lr=lr, optimizer="sgd"), _digits_loader(n=1024))
    assert stats.state_dict()["steps"] == [0, 1, 2, 5, 10, 20, 50]
    found = [f for f in stats.findings if f.severity.value == "warning"]
    if not explodes:
        assert found == []
        return
    assert found and found[0].code == "exploding-gradient" and found[0].step <= 50
    assert "root cause is likely the learning rate: SGD starts with lr 5" in found[0].message

"""ActivationStats: dead ReLUs and saturated sigmoids, planted and healthy, views, costs, state."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from lightning_tips.checks import activations as act_mod
from lightning_tips.checks.activations import (
    ActivationStats,
    _Recorder,
    _specs,
    activation_findings,
    activation_spec,
    activation_stats,
    activations_over_time,
)
from tests.helpers.activation_models import (
    FunctionalReLUNet,
    SharedReLUNet,
    TupleReLUNet,
    dead_relu_mlp,
    deep_stack,
)
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit
from tests.helpers.models import Classifier, mlp

Factory = Callable[..., pl.Trainer]


def _fit(make_trainer: Factory, net: nn.Module, cb: pl.Callback | None, *, batches: int = 4, val: int = 0,
         seed: int = 0, extra: list[pl.Callback] | None = None, **trainer_kwargs: Any) -> tuple[pl.Trainer, Classifier]:
    """``batches`` train batches of 64 digits, ``val`` val batches, deterministic; warnings dropped."""
    kwargs: dict[str, Any] = {"limit_train_batches": batches, "limit_val_batches": val, "num_sanity_val_steps": 0,
                              "deterministic": True, **trainer_kwargs}
    model = Classifier(net)
    run = fit(make_trainer, model, datamodule=DigitsDataModule(batch_size=64, limit=64 * batches, val_limit=64),
              callbacks=([cb] if cb is not None else []) + (extra or []), seed=seed, warns="ignore", **kwargs)
    return run.trainer, model


def _codes(cb: ActivationStats) -> list[tuple[str, str, str | None]]:
    return [(f.code, f.severity.value, f.module) for f in cb.findings]


# --- pure functions ------------------------------------------------------------------------------
def test_activation_spec_covers_families() -> None:
    assert activation_spec(nn.ReLU6()) is not None and activation_spec(nn.ReLU6()).high == 6.0  # type: ignore[union-attr]
    for m in (nn.ReLU(), nn.LeakyReLU(), nn.ELU(), nn.GELU(), nn.SiLU()):
        assert activation_spec(m).kind == "relu"  # type: ignore[union-attr]
    for m in (nn.Sigmoid(), nn.Tanh(), nn.Hardtanh(-2, 2), nn.Hardsigmoid()):
        assert activation_spec(m).kind == "squash"  # type: ignore[union-attr]
    assert activation_spec(nn.Hardtanh(-2, 2)).sat_high == 2.0  # type: ignore[union-attr]
    assert activation_spec(nn.Softmax(dim=1)) is None and activation_spec(nn.Linear(2, 2)) is None


def test_layer_figures_match_a_reference() -> None:
    # unit 0 fires on both samples, unit 1 on none (y = 0), unit 2 on none (LeakyReLU-negative)
    y = torch.tensor([[1.0, 0.0, -0.5], [2.0, 0.0, -1.5]])
    net = nn.Sequential(nn.Identity(), nn.ReLU())
    net[0].register_forward_hook(lambda m, i, o: y)  # the ReLU sees y, returns relu(y)
    s = activation_stats(net, torch.zeros(2, 3), bins=4)["1"]
    out = torch.relu(y)
    assert s.n_units == 3 and s.n_samples == 2 and s.n_values == 6
    assert s.dead_fraction == pytest.approx(2 / 3)
    assert s.mean == pytest.approx(out.mean().item()) and s.std == pytest.approx(out.std().item(), rel=1e-5)
    # bins of [-1, 3]: [-1,0) [0,1) [1,2) [2,3]: four zeros, a 1 and a 2
    assert s.histogram == [0.0, 4.0, 1.0, 1.0]
    assert math.isnan(s.saturated_fraction)


def test_saturation_and_units_convention() -> None:
    # NCHW: units are channels; (N, T, C): units are the last dim; (N,): one unit
    conv = nn.Sequential(nn.Conv2d(1, 5, 3), nn.Sigmoid())
    with torch.no_grad():
        conv[0].weight.fill_(10.0)
    s = activation_stats(conv, torch.ones(2, 1, 6, 6))["1"]
    assert (s.n_units, s.n_samples, s.saturated_fraction) == (5, 2 * 16, 1.0)
    seq = activation_stats(nn.Sequential(nn.Linear(4, 7), nn.Tanh()), torch.zeros(3, 9, 4))["1"]
    assert (seq.n_units, seq.n_samples, seq.saturated_fraction) == (7, 27, 0.0)
    flat = activation_stats(nn.Sequential(nn.ReLU()), torch.tensor([-1.0, 2.0]))["0"]
    assert (flat.n_units, flat.dead_fraction) == (1, 0.0)


def test_bf16_autocast_is_measured_in_float32() -> None:
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = activation_stats(net, torch.randn(32, 8))
    assert set(stats) == {"1", "3"}
    assert all(math.isfinite(s.mean) and s.std > 0 and sum(s.histogram) == s.n_values for s in stats.values())


def test_dead_over_the_global_batch_is_reduced_across_ranks() -> None:
    """Rank A's unit 0 fires and unit 1 does not; rank B the opposite: no unit is dead globally."""
    net = nn.Sequential(nn.ReLU())
    specs, outputs = _specs(net)

    def record(x: torch.Tensor) -> _Recorder:
        rec = _Recorder(specs, outputs, bins=8, keep_values=False)
        rec.hook("0", net[0], net(x))
        return rec

    a, b = record(torch.tensor([[1.0, -1.0]] * 3)), record(torch.tensor([[-1.0, 1.0]] * 5))
    assert a.finalize()["0"].dead_fraction == 0.5  # locally half dead
    other = b.state()
    glob = a.finalize(reduce=lambda state: {k: v + other[k] for k, v in state.items()})["0"]
    assert glob.dead_fraction == 0.0 and glob.n_samples == 8 and glob.mean == pytest.approx(1.0 * 8 / 16)
    assert activation_findings({"0": glob}) == []


def test_odd_outputs_are_skipped_not_crashed() -> None:
    assert activation_stats(mlp(), torch.zeros(0, 64)) == {}  # zero-size batch: no sample
    assert activation_stats(TupleReLUNet(), torch.randn(4, 64)) == {}  # tuple output: skipped
    shared = activation_stats(SharedReLUNet(), torch.randn(4, 64))
    assert {k: s.n_units for k, s in shared.items()} == {"act": 32, "act[1]": 16}  # one module, two calls


def test_output_activation_gets_no_verdict() -> None:
    net = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())  # a sigmoid feeding BCELoss
    with torch.no_grad():
        net[0].weight.fill_(20.0)
    stats = activation_stats(net, torch.ones(8, 4))
    assert stats["1"].is_output and stats["1"].saturated_fraction == 1.0
    assert activation_findings(stats) == []


def test_over_time_image_is_a_readable_chart_that_states_its_range() -> None:
    img, caption = activations_over_time([[0, 2], [1, 1], [2, 0]], -1.0, 3.0, steps=[0, 5, 10], title="net.2 (ReLU)")
    assert img.dtype.name == "uint8" and img.shape[2] == 3
    assert img.shape[0] >= 300 and img.shape[1] >= 600  # was 8 x 48 px, no axes (#12)
    assert "[-1, 3]" in caption and "viridis" in caption and "0 -> 1" in caption
    # the heat map uses the whole colour scale: viridis' top (all values in one bin) and bottom (none)
    from lightning_tips._render import colorize

    top, bottom = colorize(np.array([[1.0, 0.0]]))[0]
    pixels = img.reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - top).sum(1) <= 6).any() and (np.abs(pixels.astype(int) - bottom).sum(1) <= 6).any()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"every_n_steps": -1}, ValueError), ({"every_n_steps": 2.0}, TypeError), ({"dead_fraction": 1.5}, ValueError),
     ({"bins": 1}, ValueError), ({"history": 0}, ValueError), ({"log_histograms": "yes"}, TypeError)],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="Expected"):
        ActivationStats(**kwargs)


# --- through Trainer.fit -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("net_fn", "expected"),
    [
        (dead_relu_mlp, ("dead-activation", "net.2")),
        (lambda: mlp(hidden=32, depth=2), None),
        (lambda: deep_stack(nn.Sigmoid, gain=10.0), ("saturated-activation", None)),
        (lambda: deep_stack(nn.ReLU, gain=math.sqrt(2)), None),
    ],
    ids=["dead-relu", "healthy-relu", "saturated-sigmoid", "relu-twin"],
)
def test_planted_bugs_and_healthy_twins(make_trainer: Factory, net_fn: Callable[[], nn.Module],
                                        expected: tuple[str, str | None] | None) -> None:
    cb = ActivationStats(every_n_steps=2)
    _fit(make_trainer, net_fn(), cb)
    found = [c for c in _codes(cb) if c[1] == "warning"]
    if expected is None:
        assert found == []
    else:
        code, module = expected
        assert any(c == code and (module is None or m == module) for c, _, m in found), found
        assert all(c == code for c, _, _ in found)
        if code == "dead-activation":
            msg = next(f.message for f in cb.findings if f.module == "net.2")
            assert msg.startswith("100% of the units of `net.2` (ReLU, 32/32 units) never fired")


def test_functional_activations_are_measured(make_trainer: Factory) -> None:
    cb = ActivationStats(every_n_steps=1)
    _fit(make_trainer, FunctionalReLUNet(), cb)
    assert _codes(cb) == []  # healthy: measured, silent
    assert set(cb.state_dict()["history"]) == {"net/relu"}
    dead = FunctionalReLUNet()
    with torch.no_grad():
        dead.fc1.bias.fill_(-10.0)
    cb = ActivationStats(every_n_steps=1)
    _fit(make_trainer, dead, cb)
    assert ("dead-activation", "warning", "net/relu") in _codes(cb)
    assert "(F.relu, 32/32 units)" in cb.findings[0].message


def test_transformer_encoder_gelu_is_measured_and_silent(make_trainer: Factory) -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 32)
            layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(x.reshape(-1, 8, 8))).mean(1))

    cb = ActivationStats(every_n_steps=1)
    _fit(make_trainer, Encoder(), cb)
    assert [c for c in _codes(cb) if c[1] != "info"] == [] and _codes(cb) == []
    assert set(cb.state_dict()["history"]) == {"net.encoder.layers.0/gelu", "net.encoder.layers.1/gelu"}


def test_functional_output_sigmoid_gets_no_verdict() -> None:
    class Scores(nn.Module):  # a sigmoid on the output layer, as for BCELoss: confident outputs are no flaw
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 4)
            with torch.no_grad():
                self.fc.weight.mul_(100.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.fc(x))

    stats = activation_stats(Scores(), torch.randn(32, 64))
    assert stats["model/sigmoid"].is_output and stats["model/sigmoid"].saturated_fraction > 0.5
    assert activation_findings(stats) == []


def test_hooks_that_never_run_report_a_skip(make_trainer: Factory) -> None:
    class Unused(nn.Module):  # an activation module that forward never calls (as in a compiled model)
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.fc1(x.flatten(1)))

    cb = ActivationStats(every_n_steps=1)
    _fit(make_trainer, Unused(), cb)
    assert _codes(cb) == [("dead-activation", "info", None)]
    assert "did not run" in cb.findings[0].message


def test_scripted_model_reports_a_skip(make_trainer: Factory) -> None:
    cb = ActivationStats(every_n_steps=1)
    _fit(make_trainer, torch.jit.script(mlp()), cb, batches=2)
    assert _codes(cb) == [("dead-activation", "info", None)] and "TorchScript" in cb.findings[0].message


class _HookProbe(pl.Callback):
    """Placed after ActivationStats: sees hooks during sampled steps, none after them."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.during: list[int] = []
        self.after: list[int] = []

    @staticmethod
    def count(module: nn.Module) -> int:
        return sum(len(m._forward_hooks) for m in module.modules())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.during.append(self.count(pl_module))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: Any, batch: Any, i: int) -> None:
        self.after.append(self.count(pl_module))


def test_hooks_live_only_on_sampled_steps(make_trainer: Factory) -> None:
    probe = _HookProbe(3)
    _, model = _fit(make_trainer, mlp(depth=2), ActivationStats(every_n_steps=3), batches=7, extra=[probe])
    # hooks (the two ReLUs' and the functional probe's module stack) on steps 0, 3, 6 and the dense start 1, 2, 5
    assert [d > 0 for d in probe.during] == [True, True, True, True, False, True, True]
    assert probe.after == [0] * 7
    assert _HookProbe.count(model) == 0


def test_pure_observer_bit_identical_weights(make_trainer: Factory) -> None:
    nets = [deep_stack(nn.Sigmoid, gain=10.0) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    init = {k: v.clone() for k, v in nets[0].state_dict().items()}
    _, plain = _fit(make_trainer, nets[0], None, seed=3, batches=6)
    _, observed = _fit(make_trainer, nets[1], ActivationStats(every_n_steps=1), seed=3, batches=6)
    assert not torch.equal(plain.net[1].weight, init["1.weight"])  # it did train
    for (n, a), (_, b) in zip(plain.named_parameters(), observed.named_parameters()):
        assert torch.equal(a, b), n


def test_one_sync_per_sampled_step_only(make_trainer: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = act_mod._to_host
    monkeypatch.setattr(act_mod, "_to_host", lambda t: calls.append(t.numel()) or real(t))
    seen: list[int] = []
    orig_tolist, orig_item = torch.Tensor.tolist, torch.Tensor.item

    def spy(orig: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(self: torch.Tensor, *a: Any) -> Any:
            import inspect

            if inspect.stack()[1].filename == act_mod.__file__:
                seen.append(1)
            return orig(self, *a)
        return wrapped

    monkeypatch.setattr(torch.Tensor, "tolist", spy(orig_tolist))
    monkeypatch.setattr(torch.Tensor, "item", spy(orig_item))
    _fit(make_trainer, mlp(depth=2), ActivationStats(every_n_steps=3, log_histograms=False), batches=10)
    assert len(calls) == 7  # steps 0, 3, 6, 9 and the dense start 1, 2, 5
    assert len(seen) == 7  # and no other .tolist()/.item() from the module


def test_views_as_files_without_logger(make_trainer: Factory, tmp_path: Path) -> None:
    _fit(make_trainer, dead_relu_mlp(), ActivationStats(every_n_steps=1), batches=3, val=1)
    tips = tmp_path / "tips"
    pngs = sorted(p.name for p in tips.glob("tips_activations_over_time_net.2_step*.png"))
    assert pngs, sorted(p.name for p in tips.iterdir())
    caption = (tips / pngs[-1].replace(".png", ".txt")).read_text()
    assert "net.2 (ReLU)" in caption and "[-1, 3]" in caption and "colormap viridis" in caption
    assert (tips / "tips_activations_net.2_histogram.csv").exists()
    scalars = (tips / "scalars.csv").read_text()
    assert "tips/dead_fraction/net.2,1.0" in scalars and "tips/activation_std/net.4" in scalars


def test_views_in_tensorboard(make_trainer: Factory, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    _fit(make_trainer, mlp(depth=2), ActivationStats(every_n_steps=1), batches=3, logger=logger)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"tips/activations/net.2", "tips/activations/net.4"} <= set(tags["histograms"])
    assert {"tips/activations_over_time/net.2", "tips/activations_over_time/net.4"} <= set(tags["images"])
    assert "tips/dead_fraction/net.2" in tags["scalars"]
    assert [e.step for e in acc.Histograms("tips/activations/net.2")] == [0, 1, 2]


def test_state_round_trip_through_a_checkpoint(make_trainer: Factory, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = tmp_path / "ckpt"
    cb = ActivationStats(every_n_steps=1, log_histograms=False)
    _fit(make_trainer, dead_relu_mlp(), cb, batches=2, enable_checkpointing=True,
         extra=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True)])
    assert cb._history["net.2"]["steps"] == [0, 1]
    ckpt = next(ckpt_dir.glob("last*.ckpt"))
    state = torch.load(ckpt, weights_only=False)["callbacks"][cb.state_key]
    assert state["history"]["net.2"]["dead_fraction"] == [1.0, 1.0]

    resumed = ActivationStats(every_n_steps=1, log_histograms=False)
    _fit(make_trainer, dead_relu_mlp(), resumed, batches=2, enable_checkpointing=True, max_epochs=2,
         extra=[ModelCheckpoint(dirpath=tmp_path / "ckpt2")], ckpt_path=str(ckpt))
    assert resumed._history["net.2"]["steps"] == [0, 1, 2, 3]  # continued, not restarted
    assert [f.code for f in resumed.findings].count("dead-activation") == 1  # restored, not repeated


def test_pickle_and_state_key() -> None:
    import pickle

    cb = pickle.loads(pickle.dumps(ActivationStats(every_n_steps=7)))
    assert cb.every_n_steps == 7
    assert ActivationStats(dead_fraction=0.3).state_key != ActivationStats().state_key


def test_gradient_accumulation_samples_each_step_once(make_trainer: Factory) -> None:
    cb = ActivationStats(every_n_steps=1, log_histograms=False)
    _fit(make_trainer, mlp(depth=2), cb, batches=4, accumulate_grad_batches=2)
    assert cb._history["net.2"]["steps"] == [0, 1]  # 4 batches, 2 optimizer steps, one sample each


def test_hooks_removed_when_training_raises(make_trainer: Factory) -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(depth=1)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out = self.net(x)  # the hooked ReLU has run
            if self.calls == 2:
                raise RuntimeError("boom")
            return out

    boom = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        _fit(make_trainer, boom, ActivationStats(every_n_steps=1), batches=3)
    assert _HookProbe.count(boom) == 0


def test_histograms_only_on_their_own_period(make_trainer: Factory) -> None:
    """histogram_every_n_steps=4 with every_n_steps=2: statistics at 0, 1, 2, 4, 5, 6 (dense start); histograms at 0, 4."""
    from lightning_tips._loggers import files_dir

    stats = ActivationStats(every_n_steps=2, histogram_every_n_steps=4)
    trainer = make_trainer(callbacks=[stats], max_steps=8, limit_val_batches=0)
    trainer.fit(Classifier(mlp(64, 10)), DigitsDataModule(image=False))
    rows = (files_dir(trainer) / "tips_activations_net.2_histogram.csv").read_text().splitlines()[1:]
    assert sorted({int(r.split(",")[0]) for r in rows}) == [0, 4]
    scalars = (files_dir(trainer) / "scalars.csv").read_text().splitlines()[1:]
    assert {int(line.split(",")[0]) for line in scalars if "net.2" in line} == {0, 1, 2, 4, 5, 6}
    with pytest.raises(ValueError, match="histogram_every_n_steps"):
        ActivationStats(histogram_every_n_steps=-1)


@pytest.mark.parametrize(("period", "hist_steps"), [(None, {0, 1, 2, 4, 5}), (0, set())])
def test_histogram_period_none_follows_the_sampling_and_zero_is_never(
    make_trainer: Factory, period: int | None, hist_steps: set[int]
) -> None:
    from lightning_tips._loggers import files_dir

    stats = ActivationStats(every_n_steps=2, histogram_every_n_steps=period)
    trainer = make_trainer(callbacks=[stats], max_steps=6, limit_val_batches=0)
    trainer.fit(Classifier(mlp(64, 10)), DigitsDataModule(image=False))
    hist = files_dir(trainer) / "tips_activations_net.2_histogram.csv"
    rows = hist.read_text().splitlines()[1:] if hist.exists() else []
    assert {int(r.split(",")[0]) for r in rows} == hist_steps
    assert (files_dir(trainer) / "scalars.csv").exists()  # the statistics themselves still ran


# --- evidence (issues #10 item 4, #11 items 4-5) ---------------------------------------------------
class _SkipFirst(Classifier):
    """Returns ``None`` from its first ``training_step``: a legal skipped batch, no forward."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if batch_idx == 0 and self.current_epoch == 0:
            return None
        return super().training_step(batch, batch_idx)


def test_a_skipped_first_step_does_not_switch_the_check_off(make_trainer: Factory) -> None:
    cb = ActivationStats(every_n_steps=100)  # only global step 0 is sampled: its first batch is skipped
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(limit_train_batches=3, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(_SkipFirst(dead_relu_mlp()), datamodule=DigitsDataModule(batch_size=64, limit=192, val_limit=64))
    assert not any("did not run" in f.message for f in cb.findings), cb.findings
    assert ("dead-activation", "warning", "net.2") in _codes(cb)


def test_one_value_per_unit_is_no_evidence() -> None:
    """About half of a healthy ReLU layer's units are off for any single sample: no verdict from one."""
    torch.manual_seed(0)
    net = mlp(in_features=64, hidden=32, depth=2)
    one = activation_stats(net, torch.randn(1, 64))
    assert any(s.dead_fraction > 0.3 for s in one.values())  # the noise the verdict must not read as a bug
    assert activation_findings(one) == []
    dead = activation_stats(dead_relu_mlp(), torch.randn(1, 64))
    assert activation_findings(dead) == []  # too little evidence either way
    assert [f.module for f in activation_findings(activation_stats(dead_relu_mlp(), torch.randn(16, 64)))] == ["2"]


@pytest.mark.parametrize("dead", [False, True], ids=["healthy", "dead"])
def test_batches_of_one_accumulate_evidence_across_sampled_steps(make_trainer: Factory, dead: bool) -> None:
    """Batch 1: one value per unit per step. The verdict waits until 16 sampled steps hold 16 values per unit."""
    cb = ActivationStats(every_n_steps=1)
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(limit_train_batches=20, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[cb])
    net = dead_relu_mlp() if dead else mlp(hidden=32, depth=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(net), datamodule=DigitsDataModule(batch_size=1, limit=20, val_limit=8))
    found = [f for f in cb.findings if f.severity.value != "info"]
    if not dead:
        assert found == []
        return
    [f] = [f for f in found if f.module == "net.2"]
    assert f.code == "dead-activation" and f.step == 15  # the 16th sampled step: 16 values per unit
    assert "over 16 values per unit (every sample and position of 16 sampled batches" in f.message


def test_nan_activations_get_no_dead_or_saturated_verdict(make_trainer: Factory) -> None:
    relu_net, sig_net = dead_relu_mlp(), deep_stack(nn.Sigmoid, gain=10.0)
    for net in (relu_net, sig_net):
        with torch.no_grad():
            net[1].weight[0, 0] = float("nan")  # every later activation is NaN
    for net in (relu_net, sig_net):
        stats = activation_stats(net, torch.randn(32, 64))
        assert any(math.isnan(s.mean) for s in stats.values())
        assert activation_findings(stats) == []
    cb = ActivationStats(every_n_steps=1)
    _fit(make_trainer, dead_relu_mlp(), cb, batches=2)  # the dead twin still fires when finite
    assert ("dead-activation", "warning", "net.2") in _codes(cb)
    cb = ActivationStats(every_n_steps=1)
    _fit(make_trainer, relu_net, cb, batches=2)
    assert [c for c in _codes(cb) if c[1] != "info"] == []
    assert not any("nan" in f.message for f in cb.findings)

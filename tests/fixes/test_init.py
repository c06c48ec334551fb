"""init_weights_ / WeightInit (T11, P5, P15): statistics per scheme, the output bias left alone."""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_tips.fixes.forget_gate import ForgetGateBias
from lightning_tips.fixes.init import WeightInit, init_weights_
from lightning_tips.fixes.output_bias import OutputBiasInit
from tests.helpers.data import digits_tensors
from tests.helpers.fixes_models import LSTMNet, RNGProbe, Snapshot, digits_mlp, fit_digits, imbalanced_digits, loader
from tests.helpers.models import Classifier, small_cnn


def _std(w: torch.Tensor) -> float:
    return float(w.detach().std())


# --- the pure function: statistics ----------------------------------------------------------------


def test_he_std_on_a_wide_relu_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    assert init_weights_(net)["0"] == "he"
    assert _std(net[0].weight) == pytest.approx(math.sqrt(2 / 1024), rel=0.02)
    assert abs(float(net[0].weight.detach().mean())) < 1e-3


def test_he_leaky_relu_gain_and_norm_between():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.2), nn.Linear(512, 2))
    assert init_weights_(net)["0"] == "he"  # the activation after the BatchNorm counts
    assert _std(net[0].weight) == pytest.approx(math.sqrt(2 / (1 + 0.2**2) / 512), rel=0.03)


def test_xavier_for_tanh_and_sigmoid():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 256), nn.Tanh(), nn.Linear(256, 256), nn.Sigmoid(), nn.Linear(256, 2))
    applied = init_weights_(net)
    assert applied == {"0": "xavier", "2": "xavier", "4": "lecun"}  # the output layer: unit gain (T9)
    assert _std(net[0].weight) == pytest.approx(5 / 3 * math.sqrt(2 / (512 + 256)), rel=0.03)
    assert _std(net[2].weight) == pytest.approx(math.sqrt(2 / (256 + 256)), rel=0.03)
    assert float(net[0].weight.detach().abs().max()) <= 5 / 3 * math.sqrt(6 / (512 + 256)) + 1e-6  # uniform


def test_lecun_for_selu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(800, 400), nn.SELU(), nn.Linear(400, 2))
    assert init_weights_(net)["0"] == "lecun"
    assert _std(net[0].weight) == pytest.approx(1 / math.sqrt(800), rel=0.03)


def test_conv_he_uses_fan_in_with_the_receptive_field():
    torch.manual_seed(0)
    net = small_cnn(channels=64)
    applied = init_weights_(net)
    assert applied["0"] == "he" and applied["2"] == "he"
    assert _std(net[2].weight) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)


def test_recurrent_weights_orthogonal_per_gate():
    torch.manual_seed(0)
    lstm = nn.LSTM(10, 32, num_layers=2, bidirectional=True)
    applied = init_weights_(lstm)
    assert applied["weight_hh_l1_reverse"] == "orthogonal" and applied["weight_ih_l0"] == "xavier"
    for name, p in lstm.named_parameters():
        if name.startswith("weight_hh"):
            for block in p.detach().chunk(4, 0):  # W W^T = I per gate
                assert torch.allclose(block @ block.T, torch.eye(32), atol=1e-5)
        elif name.startswith("weight_ih"):
            fan_in = p.shape[1]
            assert _std(p) == pytest.approx(math.sqrt(2 / (fan_in + 32)), rel=0.1)
        else:
            assert torch.equal(p, torch.zeros_like(p))  # biases zeroed


def test_gru_and_relu_rnn():
    torch.manual_seed(0)
    gru, rnn = nn.GRU(16, 64), nn.RNN(16, 64, nonlinearity="relu")
    init_weights_(gru)
    w = gru.weight_hh_l0.detach()
    assert all(torch.allclose(b @ b.T, torch.eye(64), atol=1e-5) for b in w.chunk(3, 0))
    assert init_weights_(rnn)["weight_ih_l0"] == "he"
    assert torch.allclose(rnn.weight_hh_l0 @ rnn.weight_hh_l0.T, torch.eye(64), atol=1e-5)


def test_biases_zeroed_except_the_output_layer():
    torch.manual_seed(0)
    net = digits_mlp()
    out_bias = net[5].bias.detach().clone()
    init_weights_(net)
    assert float(net[1].bias.detach().abs().max()) == 0.0 and float(net[3].bias.detach().abs().max()) == 0.0
    assert torch.equal(net[5].bias, out_bias)


def test_output_bias_init_survives_weight_init():
    _, y = imbalanced_digits()
    net = digits_mlp()
    from lightning_tips.fixes.output_bias import init_output_bias_

    prior_bias = init_output_bias_(net[5], y)
    init_weights_(net)
    assert torch.equal(net[5].bias.detach(), prior_bias)


def test_forced_schemes_and_unrecognised_activations():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.Linear(256, 2))
    assert init_weights_(net, "xavier") == {"0": "xavier", "2": "xavier", "3": "xavier"}
    assert _std(net[0].weight) == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert init_weights_(net, "orthogonal")["0"] == "orthogonal"
    w = net[2].weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(256), atol=1e-4)  # gain 1: no activation follows layer 2
    assert init_weights_(net, "lecun")["3"] == "lecun"
    # auto: layer 2 is followed by another layer, not an activation -> the He default
    assert init_weights_(net)["2"] == "he"


def test_lazy_layers_left_alone_and_bad_scheme():
    net = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    assert init_weights_(net) == {"2": "lecun"}
    with pytest.raises(ValueError, match="Expected scheme"):
        init_weights_(net, "kaiming")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected scheme"):
        WeightInit("kaiming")  # type: ignore[arg-type]


# --- the callback, through Trainer.fit ------------------------------------------------------------


_fit = fit_digits


def test_callback_equals_function_and_keeps_the_rng(make_trainer):
    pl.seed_everything(3, verbose=False)
    net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    reference = copy.deepcopy(net)
    torch.manual_seed(torch.initial_seed())  # what the callback does, on a private RNG
    applied = init_weights_(reference)
    probe, cb, snap = RNGProbe(), WeightInit(), Snapshot()
    trainer = _fit(make_trainer, Classifier(net), [probe, cb, snap])
    assert trainer.global_step == 2
    for k, v in reference.state_dict().items():
        assert torch.equal(snap.at_fit_start[f"net.{k}"], v)
    assert torch.equal(probe.rng["fit_start"], snap.rng["fit_start"])  # the user's RNG stream untouched
    assert cb.applied == {f"net.{k}": v for k, v in applied.items()}
    f = cb.findings[0]
    assert (f.code, f.severity.value) == ("weight-init", "info")
    assert f.figures == {"he": 1.0, "xavier": 1.0, "orthogonal": 0.0, "lecun": 1.0, "kept": 0.0}
    assert "he 1, xavier 1, lecun 1" in f.message


def test_weight_init_then_forget_gate_bias(make_trainer):
    torch.manual_seed(0)
    snap = Snapshot()
    _fit(make_trainer, Classifier(LSTMNet(num_layers=2)), [WeightInit(), ForgetGateBias(), snap])
    for k in ("l0", "l1"):
        b_ih, b_hh = snap.at_fit_start[f"net.rnn.bias_ih_{k}"], snap.at_fit_start[f"net.rnn.bias_hh_{k}"]
        assert torch.allclose(b_ih[16:32] + b_hh[16:32], torch.ones(16))
        assert float(b_ih[:16].abs().max()) == 0.0  # the other gates zeroed by WeightInit
        w = snap.at_fit_start[f"net.rnn.weight_hh_{k}"][:16]
        assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)


def test_with_output_bias_init_the_prior_stays(make_trainer):
    x, y = imbalanced_digits()
    snap = Snapshot()
    trainer = make_trainer(max_steps=2, callbacks=[WeightInit(), OutputBiasInit(), snap])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(digits_mlp()), train_dataloaders=loader(x, y))
    prior = torch.bincount(y, minlength=10).float() / len(y)
    assert torch.allclose(torch.softmax(snap.at_train_start["net.5.bias"], 0), prior, atol=1e-5)


def test_skip_model_without_layers(make_trainer):
    class OnlyParams(Classifier):
        def __init__(self) -> None:
            super().__init__(nn.Identity())
            self.w = nn.Parameter(torch.zeros(64, 10))

        def forward(self, x):
            return x @ self.w

    cb = WeightInit()
    trainer = _fit(make_trainer, OnlyParams(), [cb])
    assert trainer.global_step == 2
    assert len(cb.findings) == 1 and cb.findings[0].message.startswith("skipped: OnlyParams has no")
    assert cb.applied == {}


def test_resume_does_not_reapply_and_state_round_trips(make_trainer, tmp_path: Path):
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = WeightInit()
    _fit(make_trainer, Classifier(digits_mlp()), [first, ckpt], max_steps=3, enable_checkpointing=True)
    saved = torch.load(ckpt.last_model_path, weights_only=False)["state_dict"]

    second, snap = WeightInit(), Snapshot()
    trainer = make_trainer(max_steps=5, max_epochs=5, callbacks=[second, snap])
    x, y = digits_tensors(image=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(digits_mlp()), train_dataloaders=loader(x[:512], y[:512]), ckpt_path=ckpt.last_model_path)
    for k, v in saved.items():
        assert torch.equal(snap.at_train_start[k], v)  # the checkpoint's weights, not re-initialised
    assert second.applied == first.applied and len(second.findings) == 1


def test_state_key_and_pickle():
    a = WeightInit()
    assert a.state_key != WeightInit("xavier").state_key
    a.applied = {"net.0": "he"}
    b = WeightInit()
    b.load_state_dict(pickle.loads(pickle.dumps(a)).state_dict())
    assert b.applied == {"net.0": "he"}
    b.load_state_dict({})
    assert b.applied == {}


# --- weights that matter are never wiped (#10 item 2) ---------------------------------------------------------
def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_layer_is_never_touched_by_recipe(make_trainer):
    """An MLP whose first layer is frozen (a pretrained backbone, in real life): `Recipe(weight_init="auto")`
    used to re-initialise it ("initialised 2 weight tensor(s)")."""
    import lightning_tips as lt

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    net[0].requires_grad_(False)
    before = _state(net)
    recipe, snap = lt.Recipe(weight_init="auto", preflight=False), Snapshot()
    _fit(make_trainer, Classifier(net), [recipe, snap])
    assert torch.equal(snap.at_train_start["net.0.weight"], before["0.weight"])
    assert torch.equal(snap.at_train_start["net.0.bias"], before["0.bias"])
    assert not torch.equal(snap.at_train_start["net.2.weight"], before["2.weight"])  # the trainable layer is
    init = recipe.child(WeightInit)
    assert init.applied == {"net.2": "lecun"}
    [f] = [f for f in recipe.findings if f.code == "weight-init"]
    assert "initialised 1 weight tensor(s)" in f.message and "`net.0` frozen" in f.message


def test_force_does_not_touch_frozen_layers_either(make_trainer):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    net[0].requires_grad_(False)
    before = _state(net)
    cb, snap = WeightInit(force=True), Snapshot()
    _fit(make_trainer, Classifier(net), [cb, snap])
    assert torch.equal(snap.at_fit_start["net.0.weight"], before["0.weight"])
    assert cb.applied == {"net.2": "lecun"}


def test_pretrained_model_is_untouched_by_default_and_force_reinitialises_it(make_trainer):
    """A model trained for a few steps, then passed to a new fit (fine-tuning, or weights loaded from a file):
    every layer deviates from PyTorch's default init, so nothing is re-initialised and the finding says why."""
    torch.manual_seed(0)
    model = Classifier(digits_mlp(), lr=1e-2)
    _fit(make_trainer, model, [], max_steps=10)
    trained = _state(model)
    cb, snap = WeightInit(), Snapshot()
    trainer = _fit(make_trainer, model, [cb, snap])
    assert trainer.global_step == 2
    assert all(torch.equal(snap.at_fit_start[k], v) for k, v in trained.items())
    assert cb.applied == {}
    [f] = cb.findings
    assert f.skipped and f.severity.value == "info" and "not freshly initialised" in f.message
    assert "force=True" in f.message
    # ... loaded into a new instance: the same
    clone = Classifier(digits_mlp(), lr=1e-2)
    clone.load_state_dict(trained)
    cb2, snap2 = WeightInit(), Snapshot()
    _fit(make_trainer, clone, [cb2, snap2])
    assert all(torch.equal(snap2.at_fit_start[k], v) for k, v in trained.items()) and cb2.applied == {}
    # ... unless forced
    forced, snap3 = WeightInit(force=True), Snapshot()
    _fit(make_trainer, model, [forced, snap3])
    assert len(forced.applied) == 3
    assert not torch.equal(snap3.at_fit_start["net.1.weight"], snap.at_fit_start["net.1.weight"])


def test_fresh_models_of_every_layer_kind_are_still_initialised():
    """The default init of Linear, Conv2d, ConvTranspose2d, Bilinear, LSTM, GRU looks fresh (no false keep)."""
    from lightning_tips.fixes.init import layers_to_keep

    for seed in range(5):
        torch.manual_seed(seed)
        net = nn.ModuleDict({
            "lin": nn.Linear(64, 32), "small": nn.Linear(3, 2), "conv": nn.Conv2d(3, 8, 3),
            "deconv": nn.ConvTranspose2d(8, 4, 3), "bil": nn.Bilinear(5, 6, 7), "lstm": nn.LSTM(8, 16, 2),
            "gru": nn.GRU(4, 8), "cell": nn.LSTMCell(4, 8),
        })
        assert layers_to_keep(net) == {}
        assert set(init_weights_(net)) >= {"lin", "small", "conv", "deconv", "bil"}


def test_custom_inits_are_kept_unless_forced():
    from lightning_tips.fixes.init import layers_to_keep

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    nn.init.normal_(net[0].weight, std=0.02)  # GPT-style
    nn.init.xavier_uniform_(net[2].weight)
    assert set(layers_to_keep(net)) == {"0", "2"}
    assert layers_to_keep(net, fresh_only=False) == {}
    before = _state(net)
    assert init_weights_(net, keep=layers_to_keep(net)) == {"4": "lecun"}
    assert torch.equal(net[0].weight, before["0.weight"]) and torch.equal(net[2].weight, before["2.weight"])


def test_the_output_layer_gets_unit_gain_so_the_initial_loss_is_near_log_c():
    """T9: He (gain sqrt 2) on the logits layer doubled their variance: initial loss 3.8 vs log 10 = 2.3 on
    the digits CNN under Recipe(weight_init="auto"). The output layer now gets LeCun normal (gain 1)."""
    from tests.helpers.data import digits_tensors

    x, y = digits_tensors()
    losses = []
    for seed in range(5):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        assert init_weights_(net)["5"] == "lecun"
        assert _std(net[5].weight) == pytest.approx(1 / math.sqrt(128), rel=0.1)
        losses.append(float(torch.nn.functional.cross_entropy(net(x[:256]), y[:256])))
    assert max(losses) < 2.0 * math.log(10), losses

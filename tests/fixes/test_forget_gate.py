"""ForgetGateBias (T17): forget slices sum to the value on every LSTM layer and direction."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_tips.fixes.forget_gate import ForgetGateBias, lstm_modules, set_forget_gate_bias_
from tests.helpers.data import digits_tensors
from tests.helpers.fixes_models import ForgetMixinClassifier, LSTMNet, Snapshot, digits_mlp, fit_digits, loader
from tests.helpers.models import Classifier


def _forget_sums(module: nn.Module) -> list[torch.Tensor]:
    """bias_ih[H:2H] + bias_hh[H:2H] for every layer/direction of every LSTM."""
    sums = []
    for _, m in lstm_modules(module):
        h = m.hidden_size
        names = [n for n, _ in m.named_parameters() if n.startswith("bias_ih")]
        for n in names:
            sums.append((getattr(m, n) + getattr(m, n.replace("bias_ih", "bias_hh")))[h : 2 * h].detach())
    return sums


def _assert_forget(module: nn.Module, value: float, expected_gates: int) -> None:
    sums = _forget_sums(module)
    assert len(sums) == expected_gates
    for s in sums:
        assert torch.allclose(s, torch.full_like(s, value), atol=1e-6)


_fit = fit_digits


# --- the pure function ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "gates"),
    [
        ({}, 1),
        ({"num_layers": 3}, 3),
        ({"num_layers": 2, "bidirectional": True}, 4),
        ({"num_layers": 2, "bidirectional": True, "proj_size": 3}, 4),
    ],
)
def test_every_layer_and_direction(kwargs, gates):
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 6, **kwargs)
    before = {n: p.detach().clone() for n, p in lstm.named_parameters()}
    assert set_forget_gate_bias_(lstm, 1.0) == gates
    _assert_forget(lstm, 1.0, gates)
    for n, p in lstm.named_parameters():
        if n.startswith("bias"):
            keep = torch.cat([p[:6], p[12:]])  # input, cell and output gates untouched
            assert torch.equal(keep, torch.cat([before[n][:6], before[n][12:]]))
            assert torch.equal(p[6:12], torch.full((6,), 1.0 if "ih" in n else 0.0))
        else:
            assert torch.equal(p, before[n])  # weights untouched (weight_hr too with proj_size)


def test_proj_size_keeps_the_4h_bias_layout():
    lstm = nn.LSTM(8, 6, proj_size=3)
    assert lstm.bias_ih_l0.shape == (24,) and lstm.weight_hh_l0.shape == (24, 3)
    set_forget_gate_bias_(lstm, 2.0)
    _assert_forget(lstm, 2.0, 1)


def test_lstm_cell_and_nested_modules():
    net = nn.ModuleDict({"a": nn.LSTMCell(4, 5), "b": nn.Sequential(nn.LSTM(5, 5, bidirectional=True)), "c": nn.GRU(5, 5)})
    gru_before = copy.deepcopy(net["c"].state_dict())
    assert set_forget_gate_bias_(net, 1.5) == 3
    _assert_forget(net, 1.5, 3)
    assert all(torch.equal(v, net["c"].state_dict()[k]) for k, v in gru_before.items())  # GRU: no forget gate


def test_bias_false_and_no_lstm_set_nothing():
    assert set_forget_gate_bias_(nn.LSTM(4, 4, bias=False)) == 0
    assert set_forget_gate_bias_(nn.Sequential(nn.Linear(4, 4))) == 0
    with pytest.raises(ValueError, match="Expected value"):
        set_forget_gate_bias_(nn.LSTM(4, 4), float("inf"))


# --- the callback, through Trainer.fit ------------------------------------------------------------


def test_callback_sets_every_gate_before_training(make_trainer):
    torch.manual_seed(0)
    model = Classifier(LSTMNet(num_layers=2, bidirectional=True))
    cb, snap = ForgetGateBias(), Snapshot()
    trainer = _fit(make_trainer, model, [cb, snap])
    assert trainer.global_step == 2
    state = snap.at_fit_start
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        s = state[f"net.rnn.bias_ih{suffix}"][16:32] + state[f"net.rnn.bias_hh{suffix}"][16:32]
        assert torch.allclose(s, torch.ones(16))
    assert [(f.code, f.severity.value) for f in cb.findings] == [("forget-gate-bias", "info")]
    f = cb.findings[0]
    assert f.figures == {"modules": 1.0, "gates": 4.0, "value": 1.0} and "`net.rnn`" in f.message
    assert cb.gates_set == 4


def test_callback_proj_size_and_cell(make_trainer):
    torch.manual_seed(0)
    cb, snap = ForgetGateBias(value=2.0), Snapshot()
    _fit(make_trainer, Classifier(LSTMNet(proj_size=4)), [cb, snap])
    s = snap.at_fit_start["net.rnn.bias_ih_l0"][16:32] + snap.at_fit_start["net.rnn.bias_hh_l0"][16:32]
    assert torch.allclose(s, torch.full((16,), 2.0))
    cb2, snap2 = ForgetGateBias(), Snapshot()
    _fit(make_trainer, Classifier(LSTMNet(cell=True)), [cb2, snap2])
    s2 = snap2.at_fit_start["net.rnn.bias_ih"][16:32] + snap2.at_fit_start["net.rnn.bias_hh"][16:32]
    assert torch.allclose(s2, torch.ones(16)) and cb2.gates_set == 1


def test_callback_equals_mixin_equals_function(make_trainer):
    torch.manual_seed(0)
    net = LSTMNet(num_layers=2, bidirectional=True, proj_size=4)
    by_function = copy.deepcopy(net)
    set_forget_gate_bias_(by_function, 1.0)
    by_mixin = ForgetMixinClassifier(copy.deepcopy(net), 1.0)
    snap = Snapshot()
    _fit(make_trainer, Classifier(copy.deepcopy(net)), [ForgetGateBias(1.0), snap])
    for k, v in by_function.state_dict().items():
        assert torch.equal(v, by_mixin.net.state_dict()[k])
        assert torch.equal(v, snap.at_fit_start[f"net.{k}"])


def test_skip_model_without_lstm(make_trainer):
    cb = ForgetGateBias()
    trainer = _fit(make_trainer, Classifier(digits_mlp()), [cb])
    assert trainer.global_step == 2
    assert [(f.code, f.severity.value) for f in cb.findings] == [("forget-gate-bias", "info")]
    assert cb.findings[0].message.startswith("skipped: Classifier has no nn.LSTM/nn.LSTMCell")
    assert cb.gates_set == 0


def test_skip_lstm_without_bias(make_trainer):
    torch.manual_seed(0)
    model = Classifier(LSTMNet(bias=False))
    before = copy.deepcopy(model.state_dict())
    cb, snap = ForgetGateBias(), Snapshot()
    trainer = _fit(make_trainer, model, [cb, snap])
    assert trainer.global_step == 2
    assert len(cb.findings) == 1 and "built with bias=False" in cb.findings[0].message
    assert cb.findings[0].module == "net.rnn"
    assert all(torch.equal(v, snap.at_fit_start[k]) for k, v in before.items())


def test_bad_arguments():
    for bad in (float("nan"), "1.0", True):
        with pytest.raises(ValueError, match="Expected value"):
            ForgetGateBias(bad)  # type: ignore[arg-type]


def test_resume_does_not_reapply_and_state_round_trips(make_trainer, tmp_path: Path):
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = ForgetGateBias()
    _fit(make_trainer, Classifier(LSTMNet(), lr=0.05), [first, ckpt], max_steps=4, enable_checkpointing=True)
    saved = torch.load(ckpt.last_model_path, weights_only=False)["state_dict"]
    trained = saved["net.rnn.bias_ih_l0"][16:32] + saved["net.rnn.bias_hh_l0"][16:32]
    assert not torch.allclose(trained, torch.ones(16), atol=1e-3)  # it trained

    second, snap = ForgetGateBias(), Snapshot()
    trainer = make_trainer(max_steps=6, max_epochs=5, callbacks=[second, snap])
    x, y = digits_tensors(image=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(LSTMNet()), train_dataloaders=loader(x[:512], y[:512]), ckpt_path=ckpt.last_model_path)
    assert torch.equal(snap.at_train_start["net.rnn.bias_ih_l0"], saved["net.rnn.bias_ih_l0"])  # not re-applied
    assert second.gates_set == 1
    assert [f.to_dict() for f in second.findings] == [f.to_dict() for f in first.findings]


def test_state_key_and_pickle():
    a = ForgetGateBias(1.0)
    assert a.state_key != ForgetGateBias(2.0).state_key
    a.gates_set = 3
    b = ForgetGateBias(1.0)
    b.load_state_dict(pickle.loads(pickle.dumps(a)).state_dict())
    assert b.gates_set == 3
    b.load_state_dict({})
    assert b.gates_set == 0


def test_a_frozen_lstm_is_left_alone(make_trainer):
    """A frozen (pretrained) LSTM keeps its biases; an unfrozen one beside it gets the forget-gate bias."""
    import lightning.pytorch as pl

    class TwoLSTMs(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.frozen, self.free = nn.LSTM(8, 8, batch_first=True), nn.LSTM(8, 8, batch_first=True)
            self.frozen.requires_grad_(False)
            self.head = nn.Linear(8, 10)

        def training_step(self, batch, batch_idx):
            x, y = batch
            out, _ = self.free(self.frozen(x.view(-1, 8, 8))[0])
            return torch.nn.functional.cross_entropy(self.head(out[:, -1]), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    model = TwoLSTMs()
    before = {k: v.clone() for k, v in model.frozen.state_dict().items()}
    cb = ForgetGateBias()
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    trainer = make_trainer(max_steps=1, callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32))
    assert all(torch.equal(v, before[k]) for k, v in model.frozen.state_dict().items())
    assert cb.gates_set == 1
    skipped = [f for f in cb.findings if f.skipped]
    assert len(skipped) == 1 and "`frozen`" in skipped[0].message

"""InputIndependenceCheck: the output must follow the input, the labels must follow the inputs (R2.7)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips.checks._preflight import CheckSkipped
from lightning_tips.checks.input_independence import (
    InputIndependenceCheck,
    constant_baseline,
    input_independence,
    input_independence_verdict,
    learned_verdict,
)
from tests.helpers import fitting
from tests.helpers.data import digits_tensors
from tests.helpers.models import Classifier, small_cnn
from tests.helpers.preflight_models import (
    DictClassifier,
    DiscardsBody,
    FunctionalZeroHead,
    IgnoresInput,
    RowsGRU,
    RowsLSTM,
    TokenBag,
    ZeroedInput,
    codes,
    dead_mlp,
    dict_loader,
    digit_rows_loader,
    digit_tokens_loader,
    digits_loader,
    fit,
    zero_head,
)


def _batch(shuffle_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(digits_loader(shuffle_labels=shuffle_labels, shuffle=False)))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _loaders(shuffle_labels: bool, n_train: int = 256, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    """Digits as 64 features: train on the first ``n_train``, validate on 300 others; ``shuffle_labels``
    permutes the labels apart from the inputs in both (the planted bug)."""
    x, y = digits_tensors(image=False)
    if shuffle_labels:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[1000:1300], y[1000:1300]), batch_size=100)
    return train, val


def _fit_val(make_trainer, model, loaders, check, epochs: int) -> None:
    torch.manual_seed(0)  # torch's generator only, not seed_everything
    train, val = loaders
    fitting.fit(make_trainer, model, train, val, callbacks=[check], seed=None, warns="pass", max_epochs=epochs)


# --- the pre-flight part: does the output follow the input? ----------------------------------------


def test_pure_function_healthy_and_planted() -> None:
    fig = input_independence(Classifier(small_cnn()), _batch())
    assert fig["ignores_input"] == 0.0 and fig["explained"] == "" and fig["loss"] == "cross_entropy"
    assert input_independence_verdict(fig).severity is None
    for planted in (IgnoresInput(), ZeroedInput()):
        fig = input_independence(Classifier(planted), _batch())
        assert fig["ignores_input"] == 1.0, planted
        assert input_independence_verdict(fig).severity == "warning"


def test_zero_init_head_is_not_input_independence() -> None:
    """#11: torchvision's ViT zero-initialises its head, every logit is 0 at init — that is healthy."""
    fig = input_independence(Classifier(zero_head(small_cnn())), _batch())
    assert fig["explained"] == "zero-weight" and fig["layer"].endswith("6")
    v = input_independence_verdict(fig)
    assert v.severity is None and "zero-initialised head" in v.message


def test_dead_representation_is_info_not_warning() -> None:
    """#11 item 4: every ReLU dead makes the output constant; dead-activation is the root cause."""
    x, y = digits_tensors(image=False)
    fig = input_independence(Classifier(dead_mlp()), (x[:64], y[:64]))
    assert fig["explained"] == "dead" and fig["ignores_input"] == 0.0
    v = input_independence_verdict(fig)
    assert v.severity == "info" and "dead-activation" in v.message


def test_nonfinite_output_skips() -> None:
    x, y = _batch()
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckSkipped, match="not finite"):
        input_independence(Classifier(small_cnn()), (x, y))


def test_unlabeled_batches_skip() -> None:
    with pytest.raises(CheckSkipped, match="not \\(inputs, targets\\)"):
        input_independence(Classifier(small_cnn()), torch.randn(8, 1, 8, 8))


def test_token_inputs_are_judged_by_permutation() -> None:
    fig = input_independence(Classifier(TokenBag()), next(iter(digit_tokens_loader())))
    assert fig["ignores_input"] == 0.0 and input_independence_verdict(fig).severity is None


class PackedGRU(Classifier):
    """Inputs ``(rows, lengths)``: a packed GRU that needs its lengths sorted (permuting them raises)."""

    def __init__(self) -> None:
        super().__init__(RowsGRU())

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        x, lengths = inputs
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=True)
        _, h = self.net.gru(packed)
        return self.net.fc(h[-1])


def test_integer_inputs_that_cannot_be_permuted_fall_back_to_floats() -> None:
    x, y = digits_tensors(image=False)
    lengths = torch.arange(8, 0, -1).repeat_interleave(4)  # 32 samples, sorted lengths 8..1
    batch = ((x[:32].reshape(32, 8, 8), lengths), y[:32])
    fig = input_independence(PackedGRU(), batch)
    assert fig["ignores_input"] == 0.0 and input_independence_verdict(fig).severity is None


def test_cost_is_small() -> None:
    model, batch = Classifier(small_cnn()), _batch()
    t0 = time.perf_counter()
    input_independence(model, batch)
    assert time.perf_counter() - t0 < 0.5  # three no-grad forwards; ~0.02 s on one CPU thread


# --- through Trainer.fit: healthy twins silent, planted bugs caught ---------------------------------


def test_healthy_cnn_is_silent(make_trainer) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(small_cnn()), digits_loader(), check)
    assert codes(check) == []


@pytest.mark.parametrize("net", [RowsLSTM, RowsGRU])
def test_healthy_recurrent_classifiers_are_silent(make_trainer, net) -> None:
    """#11 item 2: LSTM/GRU sequence classifiers (batch_first, tuple and dict batches) were flagged."""
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(net()), digit_rows_loader(), check)
    assert codes(check) == []
    check = InputIndependenceCheck()
    fit(make_trainer, DictClassifier(net()), dict_loader(digit_rows_loader()), check)
    assert codes(check) == []


def test_healthy_small_batch_mlp_is_silent(make_trainer) -> None:
    """#11 item 2: "held-out loss real 2.33 vs zeroed 1.13" on a small-batch MLP (8 samples memorised)."""
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(_mlp()), digits_loader(image=False, batch_size=8), check)
    assert codes(check) == []


def test_zero_init_head_is_silent(make_trainer) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(zero_head(small_cnn())), digits_loader(), check)
    assert codes(check) == []


def test_token_inputs_are_silent(make_trainer) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(TokenBag()), digit_tokens_loader(), check)
    assert codes(check) == []


@pytest.mark.parametrize("net", [IgnoresInput, ZeroedInput])
def test_forward_ignoring_input_flagged(make_trainer, net) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(net()), digits_loader(), check)
    assert codes(check) == ["input-independent:warning"]
    assert "ignores its input" in check.findings[0].message


def test_discarded_body_is_flagged_and_functional_zero_head_is_not(make_trainer) -> None:
    """Gallery ignores-input: the forward computes a body from x but returns learned constants. Layers depend
    on the input, so the old check called it "the forward drops that dependence" (an info); with no layer
    explaining the constant output, and still constant once the all-zero parameters are filled with noise,
    it is proven: a warning. The healthy twin, a zero head applied with F.linear, is explained by that refill."""
    fig = input_independence(Classifier(DiscardsBody()), _batch())
    assert fig["ignores_input"] == 1.0 and fig["layer"].startswith("net.body") and fig["zero_filled"] == 1.0
    fig = input_independence(Classifier(FunctionalZeroHead()), _batch())
    assert fig["ignores_input"] == 0.0 and fig["explained"] == "zero-weight" and fig["layer"] == "net.w"
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(DiscardsBody()), digits_loader(), check)
    assert codes(check) == ["input-independent:warning"]
    assert "ignores the result" in check.findings[0].message and check.findings[0].module == "net.body"
    healthy = InputIndependenceCheck()
    fit(make_trainer, Classifier(FunctionalZeroHead()), digits_loader(), healthy)
    assert codes(healthy) == []


def test_dead_representation_is_info(make_trainer) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(dead_mlp()), digits_loader(image=False), check)
    assert codes(check) == ["input-independent:info"]


# --- the runtime part: validation loss against the best constant prediction -------------------------


def test_constant_baseline_and_learned_verdict() -> None:
    assert constant_baseline(torch.tensor([0, 0, 0, 0]), "cross_entropy") == 0.0
    assert constant_baseline(torch.tensor([0.5]), "cross_entropy") is None
    # not a fair chance yet, or the training data not fitted: no verdict
    assert learned_verdict(2.4, 2.3, 0.9, 2, 300, 400, 100) is None
    assert learned_verdict(2.4, 2.3, 0.9, 4, 20, 400, 100) is None
    assert learned_verdict(2.4, 2.3, 0.9, 4, 300, 50, 100) is None
    assert learned_verdict(2.4, 2.3, 2.0, 4, 300, 400, 100) is None  # slow learner: not-learning's business
    assert learned_verdict(2.29, 2.3, 0.9, 4, 300, 400, 100) is None  # below the exact baseline: it learned
    assert learned_verdict(float("nan"), 2.3, 0.9, 4, 300, 400, 100) is None


def test_shuffled_labels_flagged_at_runtime(make_trainer) -> None:
    check = InputIndependenceCheck(steps=40)
    _fit_val(make_trainer, Classifier(_mlp(), lr=3e-3), _loaders(shuffle_labels=True), check, epochs=16)
    assert codes(check) == ["input-independent:warning"]
    assert "best constant prediction" in check.findings[0].message
    f = check.findings[0].figures
    assert f["best_val_loss"] >= f["constant_baseline"] and f["train_loss"] < 0.8 * f["constant_baseline"]


def test_runtime_part_runs_inside_preflight(make_trainer) -> None:
    """Composed (Preflight, hence Recipe), the check's training hooks are forwarded to it."""
    from lightning_tips.preflight import Preflight

    pre = Preflight(data=False, init_loss=False, output_activation=False, batch_mixing=False, overfit_batch=False,
                    missing_bias=False)
    check = pre.checks[0]
    assert isinstance(check, InputIndependenceCheck)
    check.steps = 40
    _fit_val(make_trainer, Classifier(_mlp(), lr=3e-3), _loaders(shuffle_labels=True), pre, epochs=16)
    assert [f"{f.code}:{f.severity.value}" for f in pre.findings] == ["input-independent:warning"]


def test_healthy_runs_silent_at_runtime(make_trainer) -> None:
    check = InputIndependenceCheck(steps=40)
    _fit_val(make_trainer, Classifier(_mlp(), lr=3e-3), _loaders(shuffle_labels=False), check, epochs=12)
    assert codes(check) == []
    assert check._val_checks >= 3 and check._best_val < 1.0  # judged, and far below the baseline log(10)
    check = InputIndependenceCheck(steps=40)  # a small-batch run that overfits: still learns, silent
    _fit_val(make_trainer, Classifier(_mlp(), lr=3e-3), _loaders(False, n_train=64, batch_size=8), check, epochs=12)
    assert codes(check) == [] and check._val_checks >= 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Expected steps to be an int >= 1"):
        InputIndependenceCheck(steps=0)
    with pytest.raises(TypeError, match="Expected steps to be an int"):
        InputIndependenceCheck(steps=2.5)  # type: ignore[arg-type]

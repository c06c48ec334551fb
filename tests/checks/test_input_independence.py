"""InputIndependenceCheck: with zeroed inputs the model must do worse (R2.7)."""

from __future__ import annotations

import time

import pytest
import torch

from lightning_tips.checks._preflight import CheckSkipped
from lightning_tips.checks.input_independence import (
    InputIndependenceCheck,
    input_independence,
    input_independence_verdict,
)
from tests.helpers.models import Classifier, small_cnn
from tests.helpers.preflight_models import (
    IgnoresInput,
    TokenBag,
    codes,
    digit_tokens_loader,
    digits_loader,
    fit,
)


def _adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def _batch(shuffle_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(digits_loader(shuffle_labels=shuffle_labels, shuffle=False)))


def test_pure_function_figures() -> None:
    torch.manual_seed(0)
    fig = input_independence(Classifier(small_cnn()), _batch(), _adam, steps=50)
    assert fig["ignores_input"] == 0.0 and fig["heldout"] == 1.0 and fig["steps"] == 50
    assert fig["real_heldout"] < 0.9 * fig["zero_heldout"]
    assert input_independence_verdict(fig).severity is None
    shuffled = input_independence(Classifier(small_cnn()), _batch(shuffle_labels=True), _adam, steps=50)
    assert input_independence_verdict(shuffled).severity == "warning"
    ignores = input_independence(Classifier(IgnoresInput()), _batch(), _adam, steps=50)
    assert ignores["ignores_input"] == 1.0 and input_independence_verdict(ignores).severity == "warning"


def test_inconclusive_when_nothing_is_learned() -> None:
    fig = input_independence(Classifier(small_cnn()), _batch(), lambda m: torch.optim.SGD(m.parameters(), lr=1e-4))
    with pytest.raises(CheckSkipped, match="inconclusive"):
        input_independence_verdict(fig)
    frozen = input_independence(Classifier(small_cnn()), _batch(), lambda m: torch.optim.SGD(m.parameters(), lr=0.0))
    with pytest.raises(CheckSkipped, match="changed no parameter"):
        input_independence_verdict(frozen)


def test_integer_inputs_and_unlabeled_batches_skip() -> None:
    with pytest.raises(CheckSkipped, match="not floating point"):
        input_independence(Classifier(TokenBag()), next(iter(digit_tokens_loader())), _adam)
    with pytest.raises(CheckSkipped, match="not \\(inputs, targets\\)"):
        input_independence(Classifier(small_cnn()), torch.randn(8, 1, 8, 8), _adam)


def test_cost_is_small() -> None:
    model, batch = Classifier(small_cnn()), _batch()
    t0 = time.perf_counter()
    input_independence(model, batch, _adam)
    assert time.perf_counter() - t0 < 1.5  # ~0.3 s on one CPU thread


# --- through Trainer.fit ---------------------------------------------------------------------------


def test_healthy_cnn_is_silent(make_trainer) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(small_cnn()), digits_loader(), check)
    assert codes(check) == []


def test_shuffled_labels_flagged(make_trainer) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(small_cnn()), digits_loader(shuffle_labels=True), check)
    assert codes(check) == ["input-independent:warning"]
    assert "held-out" in check.findings[0].message


def test_forward_ignoring_input_flagged(make_trainer) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(IgnoresInput()), digits_loader(), check)
    assert codes(check) == ["input-independent:warning"]
    assert "ignores its input" in check.findings[0].message


def test_token_inputs_are_info(make_trainer) -> None:
    check = InputIndependenceCheck()
    fit(make_trainer, Classifier(TokenBag()), digit_tokens_loader(), check)
    assert codes(check) == ["input-independent:info"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Expected steps to be an int >= 1"):
        InputIndependenceCheck(steps=0)
    with pytest.raises(TypeError, match="Expected steps to be an int"):
        InputIndependenceCheck(steps=2.5)  # type: ignore[arg-type]

"""OutputActivationCheck: an activation on the output feeding a loss that expects logits (P3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_tips.checks._preflight import CheckSkipped
from lightning_tips.checks.output_activation import (
    LossCall,
    OutputActivationCheck,
    last_activation,
    output_activation,
    output_kind,
    trace_training_step,
)
from tests.helpers.models import Classifier, ManualClassifier, small_cnn
from tests.helpers.preflight_models import (
    BinaryClassifier,
    Regressor,
    cancer_mlp,
    codes,
    digits_loader,
    fit,
    imbalanced_cancer_loader,
    regression_loader,
    with_output,
    zero_head,
)

# --- pure functions ------------------------------------------------------------------------------


def test_output_kind() -> None:
    z = torch.randn(32, 5)
    assert output_kind(z.softmax(1)) == "probabilities"
    assert output_kind(z.log_softmax(1)) == "log-probabilities"
    assert output_kind(z.sigmoid()) == "unit-interval"
    assert output_kind(z.relu()) == "non-negative"
    assert output_kind(z) == "logits"
    assert output_kind(z[:, 0].sigmoid(), None) == "unit-interval"


def test_trace_records_loss_calls_and_producer() -> None:
    model = Classifier(with_output(nn.Linear(4, 3), nn.Softmax(1)))
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    with torch.no_grad():
        trace = trace_training_step(model, batch)
    assert [c.name for c in trace.calls] == ["cross_entropy"]
    assert trace.calls[0].producer == "softmax" and trace.calls[0].reduction == "mean"
    assert trace.output is not None and tuple(trace.output.shape) == (8, 3)
    assert last_activation(model) == ("net.1", "softmax")


def test_verdict_rules() -> None:
    z, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    yb = torch.randint(0, 2, (16,)).float()

    def call(name: str, inp: torch.Tensor, tgt: torch.Tensor, producer: str | None = None) -> LossCall:
        return LossCall(name, inp, tgt, "mean", torch.tensor(0.0), producer)

    assert output_activation(call("cross_entropy", z.softmax(1), y)).severity == "warning"
    assert output_activation(call("cross_entropy", z.relu(), y, "relu")).severity == "warning"
    assert output_activation(call("cross_entropy", z.log_softmax(1), y)).severity == "info"
    assert output_activation(call("cross_entropy", z, y)).severity is None
    assert output_activation(call("binary_cross_entropy_with_logits", z[:, 0].sigmoid(), yb, "sigmoid")).severity == "warning"
    # logits that happen to be in (0, 1) with no sigmoid anywhere are not flagged
    assert output_activation(call("binary_cross_entropy_with_logits", 0.5 + 0.1 * z[:, 0].tanh(), yb)).severity is None
    assert output_activation(call("binary_cross_entropy", z[:, 0].sigmoid(), yb, "sigmoid")).severity is None
    assert output_activation(call("nll_loss", z.log_softmax(1), y, "log_softmax")).severity is None
    assert output_activation(call("nll_loss", z.softmax(1), y, "softmax")).severity == "warning"
    assert output_activation(call("mse_loss", z.relu(), z, "relu")).severity is None
    # ReLU-like values with no activation traced: exact zeros mixed with positive scores
    assert output_activation(call("cross_entropy", z.relu(), y)).severity == "warning"
    # a zero-initialised head: every logit exactly 0, no activation anywhere — not evidence (#11 item 6)
    assert output_activation(call("cross_entropy", torch.zeros(16, 4), y)).severity is None
    with pytest.raises(CheckSkipped, match="not finite"):
        output_activation(call("cross_entropy", torch.full((16, 4), float("nan")), y))


# --- through Trainer.fit ---------------------------------------------------------------------------


@pytest.mark.parametrize("act", [nn.Softmax(1), nn.ReLU()], ids=["softmax", "relu"])
def test_activation_before_cross_entropy_flagged(make_trainer, act) -> None:
    check = OutputActivationCheck()
    fit(make_trainer, Classifier(with_output(small_cnn(), act)), digits_loader(), check)
    assert codes(check) == ["output-activation:warning"]
    assert check.findings[0].module == "net.1"
    assert "cross_entropy is fed" in check.findings[0].message


def test_sigmoid_before_bce_with_logits_flagged(make_trainer) -> None:
    loader, _ = imbalanced_cancer_loader()
    check = OutputActivationCheck()
    fit(make_trainer, BinaryClassifier(with_output(cancer_mlp(1), nn.Sigmoid()),
                                       loss_fn=F.binary_cross_entropy_with_logits), loader, check)
    assert codes(check) == ["output-activation:warning"]
    assert "sigmoid" in check.findings[0].message


def test_sigmoid_with_bce_loss_is_silent(make_trainer) -> None:
    loader, _ = imbalanced_cancer_loader()
    check = OutputActivationCheck()
    fit(make_trainer, BinaryClassifier(with_output(cancer_mlp(1), nn.Sigmoid()), loss_fn=nn.BCELoss()), loader, check)
    assert codes(check) == []


def test_logits_with_cross_entropy_module_is_silent(make_trainer) -> None:
    check = OutputActivationCheck()
    fit(make_trainer, Classifier(small_cnn(), loss_fn=nn.CrossEntropyLoss()), digits_loader(), check)
    assert codes(check) == []
    assert check._done


def test_log_softmax_with_nll_silent_and_with_cross_entropy_info(make_trainer) -> None:
    nll = OutputActivationCheck()
    fit(make_trainer, Classifier(with_output(small_cnn(), nn.LogSoftmax(1)), loss_fn=F.nll_loss), digits_loader(), nll)
    assert codes(nll) == []
    ce = OutputActivationCheck()
    fit(make_trainer, Classifier(with_output(small_cnn(), nn.LogSoftmax(1))), digits_loader(), ce)
    assert codes(ce) == ["output-activation:info"]


def test_relu_before_mse_is_silent(make_trainer) -> None:
    check = OutputActivationCheck()
    fit(make_trainer, Regressor(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 1), nn.ReLU())),
        regression_loader(3.0), check)
    assert codes(check) == []


def test_manual_optimization_is_info(make_trainer) -> None:
    check = OutputActivationCheck()
    fit(make_trainer, ManualClassifier(small_cnn()), digits_loader(), check)
    assert codes(check) == ["output-activation:info"]
    assert "manual optimization" in check.findings[0].message


def test_custom_loss_is_info(make_trainer) -> None:
    check = OutputActivationCheck()
    fit(make_trainer, Classifier(small_cnn(), loss_fn=lambda z, y: -(z.log_softmax(1).gather(1, y[:, None])).mean()),
        digits_loader(), check)
    assert codes(check) == ["output-activation:info"]
    assert "no torch loss function" in check.findings[0].message


def test_zero_init_head_is_silent(make_trainer) -> None:
    """#11 item 6: torchvision's ViT head is zero-initialised; "non-negative scores (100% exactly zero)" was wrong."""
    check = OutputActivationCheck()
    fit(make_trainer, Classifier(zero_head(small_cnn())), digits_loader(), check)
    assert codes(check) == []

"""InitialLossCheck: init-loss and loss-reduction, planted bugs and healthy twins (R2.4, R2.5, T13)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_tips.checks.init_loss import (
    InitialLossCheck,
    expected_initial_loss,
    init_loss_verdict,
    reduction_verdict,
)
from lightning_tips.checks.output_activation import LossCall
from tests.helpers.models import Classifier, mlp, small_cnn
from tests.helpers.preflight_models import (
    BinaryClassifier,
    ManualClassifier,
    NoLossClassifier,
    Regressor,
    big_init,
    cancer_mlp,
    codes,
    digits_loader,
    fit,
    imbalanced_cancer_loader,
    regression_loader,
    set_log_prior_bias,
    summed_ce,
)

# --- pure functions ------------------------------------------------------------------------------


def _ce(z: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> LossCall:
    return LossCall("cross_entropy", z, y, reduction, F.cross_entropy(z, y, reduction=reduction))


def test_expected_values_uniform_prior_and_variance() -> None:
    y = torch.tensor([0] * 90 + [1] * 10)
    fig = expected_initial_loss(_ce(torch.zeros(100, 2), y))
    assert fig is not None
    assert fig["uniform"] == pytest.approx(math.log(2))
    assert fig["prior"] == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), rel=1e-5)
    t = torch.tensor([1.0, 3.0, 5.0, 7.0])
    mse = expected_initial_loss(LossCall("mse_loss", torch.zeros(4), t, "mean", F.mse_loss(torch.zeros(4), t)))
    assert mse == {"variance": pytest.approx(5.0), "target_mean": pytest.approx(4.0)}
    assert expected_initial_loss(LossCall("l1_loss", torch.zeros(4), t, "mean", torch.tensor(1.0))) is None


def test_init_loss_verdict_thresholds() -> None:
    torch.manual_seed(0)
    y = torch.arange(64) % 10
    assert init_loss_verdict(_ce(0.01 * torch.randn(64, 10), y)).severity is None
    big = init_loss_verdict(_ce(20 * torch.randn(64, 10), y))
    assert big.severity == "warning" and big.figures["measured"] > 10
    # summed reduction: compared per sample, so a well-initialised summed loss is not an init-loss
    assert init_loss_verdict(_ce(0.01 * torch.randn(64, 10), y, "sum")).severity is None
    # a prior-initialised imbalanced output sits at the prior entropy
    y2 = torch.tensor([1] * 58 + [0] * 6)
    z2 = torch.tensor([math.log(6 / 64), math.log(58 / 64)]).expand(64, 2).clone()
    assert init_loss_verdict(_ce(z2, y2)).severity is None


def test_reduction_verdict() -> None:
    assert reduction_verdict(147.0, 73.0, 64, 32).severity == "warning"
    assert reduction_verdict(2.31, 2.28, 64, 32).severity is None
    assert reduction_verdict(2.31, 0.0, 64, 32).severity is None  # not judged on a zero loss


# --- through Trainer.fit ---------------------------------------------------------------------------


def test_healthy_cnn_passes(make_trainer) -> None:
    check = InitialLossCheck()
    fit(make_trainer, Classifier(small_cnn()), digits_loader(), check)
    assert codes(check) == []


def test_big_last_layer_is_init_loss(make_trainer) -> None:
    check = InitialLossCheck()
    with pytest.warns(UserWarning, match=r"\[init-loss\] warning: initial loss .* vs log\(10\)=2.3"):
        fit(make_trainer, Classifier(big_init(mlp(64, 10), 20.0)), digits_loader(image=False), check)
    assert codes(check) == ["init-loss:warning"]


def test_summed_loss_is_loss_reduction(make_trainer) -> None:
    check = InitialLossCheck()
    fit(make_trainer, Classifier(small_cnn(), loss_fn=summed_ce), digits_loader(), check)
    assert codes(check) == ["loss-reduction:warning"]
    assert "reduction='sum'" in check.findings[0].message


def test_loss_times_batch_size_is_loss_reduction(make_trainer) -> None:
    """A sum that is not a loss-function argument: found by the full/half batch ratio."""
    check = InitialLossCheck()
    fit(make_trainer, Classifier(small_cnn(), loss_fn=lambda z, y: F.cross_entropy(z, y, reduction="none").sum()),
        digits_loader(), check)
    assert [f.code for f in check.findings] == ["loss-reduction"]
    assert check.findings[0].figures["ratio"] == pytest.approx(2.0, rel=0.25)


def test_imbalanced_prior_bias_passes_big_init_flagged(make_trainer) -> None:
    loader, p1 = imbalanced_cancer_loader()
    assert 0.85 < p1 < 0.95
    healthy = InitialLossCheck()
    fit(make_trainer, Classifier(set_log_prior_bias(cancer_mlp(2), [1 - p1, p1])), loader, healthy)
    assert codes(healthy) == []
    buggy = InitialLossCheck()
    fit(make_trainer, Classifier(big_init(cancer_mlp(2), 30.0)), loader, buggy)
    assert codes(buggy) == ["init-loss:warning"]
    assert "prior entropy" in buggy.findings[0].message and "OutputBiasInit" in buggy.findings[0].advice


def test_mse_standardised_passes_unnormalised_flagged(make_trainer) -> None:
    net = lambda: torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))  # noqa: E731
    healthy = InitialLossCheck()
    fit(make_trainer, Regressor(net()), regression_loader(0.0), healthy)
    assert codes(healthy) == []
    buggy = InitialLossCheck()
    fit(make_trainer, Regressor(net()), regression_loader(100.0), buggy)
    assert codes(buggy) == ["init-loss:warning"]
    assert buggy.findings[0].figures["target_mean"] == pytest.approx(100.0, abs=1.0)


def test_bce_with_logits_single_output_passes(make_trainer) -> None:
    loader, _ = imbalanced_cancer_loader()
    check = InitialLossCheck()
    fit(make_trainer, BinaryClassifier(cancer_mlp(1), loss_fn=F.binary_cross_entropy_with_logits), loader, check)
    assert codes(check) == []


@pytest.mark.parametrize("model", [ManualClassifier(small_cnn()), NoLossClassifier(small_cnn())],
                         ids=["manual-optimization", "no-loss"])
def test_bad_inputs_are_info_not_crash(make_trainer, model) -> None:
    check = InitialLossCheck()
    if isinstance(model, NoLossClassifier):
        with pytest.raises(Exception, match="loss"):  # Lightning rejects the dict; the check ran first, no crash
            fit(make_trainer, model, digits_loader(), check)
    else:
        fit(make_trainer, model, digits_loader(), check)
    assert codes(check) == ["init-loss:info"]
    assert "skipped" in check.findings[0].message

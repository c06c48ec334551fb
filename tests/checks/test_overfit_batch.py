"""OverfitBatchCheck: one small batch must be overfittable (R2.8, P9, T10)."""

from __future__ import annotations

import re
import time

import pytest
import torch

from lightning_tips.checks._preflight import CheckSkipped
from lightning_tips.checks.overfit_batch import (
    OverfitBatchCheck,
    fit_batch,
    fresh_optimizer,
    overfit_batch,
    overfit_verdict,
)
from tests.helpers.models import Classifier, ManualClassifier, small_cnn
from tests.helpers.preflight_models import (
    DetachedHead,
    IgnoresInput,
    codes,
    dead_mlp,
    digits_loader,
    fit,
    frozen_cnn,
)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(digits_loader(shuffle=False)))


def _adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def test_fresh_optimizer_keeps_groups_and_base_lr() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.AdamW([{"params": net[0].parameters(), "lr": 0.1}, {"params": net[1].parameters()}],
                            lr=0.01, weight_decay=0.3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0)  # warm-up from 0: base lr is what counts
    assert opt.param_groups[0]["lr"] == 0.0 and sched is not None
    copy = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    new = fresh_optimizer(opt, net, copy)
    assert type(new) is torch.optim.AdamW
    assert [g["lr"] for g in new.param_groups] == [0.1, 0.01]
    assert new.param_groups[1]["weight_decay"] == 0.3
    assert new.param_groups[0]["params"][0] is copy[0].weight
    assert not new.state


def test_pure_overfit_healthy_and_planted() -> None:
    healthy = overfit_batch(Classifier(small_cnn()), _batch(), _adam)
    assert healthy["samples"] == 16 and healthy["steps"] == 50 and healthy["ratio"] < 0.5
    assert overfit_verdict(healthy, 50).severity is None
    lr0 = overfit_batch(Classifier(small_cnn()), _batch(), lambda m: torch.optim.Adam(m.parameters(), lr=0.0))
    v = overfit_verdict(lr0, 50)
    assert v.severity == "warning" and "no parameter changed" in v.message

    class FullyDetached(Classifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).detach()

    detached = overfit_batch(FullyDetached(small_cnn()), _batch(), _adam)
    assert detached["requires_grad"] == 0.0
    assert "does not require grad" in overfit_verdict(detached, 50).message


def test_deadline_stops_early_and_is_inconclusive() -> None:
    model = Classifier(small_cnn())
    fig = fit_batch(model, _batch(), _adam(model), steps=1000, deadline=time.perf_counter() + 0.05)
    assert 1 <= fig["steps"] < 1000
    slow = {**fig, "lr": 1e-3, "samples": 64.0, "ratio": 0.9}
    with pytest.raises(CheckSkipped, match="budget"):
        overfit_verdict(slow, 1000)


# --- through Trainer.fit ---------------------------------------------------------------------------


def test_healthy_cnn_passes(make_trainer) -> None:
    check = OverfitBatchCheck()
    fit(make_trainer, Classifier(small_cnn()), digits_loader(), check)
    assert codes(check) == []


@pytest.mark.parametrize(
    "model",
    [lambda: Classifier(small_cnn(), lr=0.0), lambda: Classifier(DetachedHead()), lambda: Classifier(frozen_cnn())],
    ids=["lr-zero", "detached-output", "frozen"],
)
def test_planted_bugs_are_not_learning(make_trainer, model) -> None:
    check = OverfitBatchCheck()
    fit(make_trainer, model(), digits_loader(), check)
    assert codes(check) == ["not-learning:warning"]
    f = check.findings[0]
    assert {"start", "end", "steps"} <= set(f.figures)
    assert "overfit one batch" in f.message


class OneCycleClassifier(Classifier):
    """Adam with OneCycleLR(max_lr): the schedule starts at max_lr / 25."""

    def __init__(self, net: torch.nn.Module, max_lr: float = 5e-3) -> None:
        super().__init__(net)
        self.max_lr = max_lr

    def configure_optimizers(self):  # type: ignore[override]
        opt = torch.optim.Adam(self.parameters(), lr=self.max_lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.max_lr,
                                                    total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_one_cycle_is_fitted_at_the_schedules_peak_lr(make_trainer) -> None:
    """#11 item 3: a healthy OneCycle run was fitted at max_lr/25 = 2e-4 and flagged (ratio 0.68)."""
    check = OverfitBatchCheck()
    fit(make_trainer, OneCycleClassifier(small_cnn()), digits_loader(), check, limit_train_batches=10, max_epochs=10)
    assert codes(check) == []
    # at the schedule's starting lr (what the copy used before) the same model is slow: the old false alarm
    slow = overfit_batch(Classifier(small_cnn()), _batch(), lambda m: torch.optim.Adam(m.parameters(), lr=2e-4))
    assert slow["ratio"] > 0.5


def test_learns_slowly_is_info_and_nan_start_skips() -> None:
    fig = {"start": 2.3, "end": 1.6, "steps": 50.0, "changed": 1.0, "requires_grad": 1.0, "lr": 2e-4,
           "samples": 16.0, "ratio": 1.6 / 2.3}
    v = overfit_verdict(fig, 50)
    assert v.severity == "info" and "learns, slowly" in v.message
    assert overfit_verdict({**fig, "end": 2.25, "ratio": 2.25 / 2.3}, 50).severity == "warning"
    assert overfit_verdict({**fig, "end": 2.5, "ratio": 2.5 / 2.3}, 50).severity == "warning"
    with pytest.raises(CheckSkipped, match="non-finite"):
        overfit_verdict({**fig, "start": float("nan"), "end": float("nan"), "ratio": float("nan")}, 50)


def test_a_root_cause_the_runtime_reports_makes_not_learning_an_info() -> None:
    """#11: the copy's verdict named "not-learning" before the runtime named the real root cause."""
    fig = {"start": 2.3, "end": 2.2, "steps": 50.0, "changed": 1.0, "requires_grad": 1.0, "lr": 1e-3,
           "samples": 16.0, "ratio": 2.2 / 2.3, "grad_ratio_first": 0.3, "grad_ratio_last": 0.2,
           "grads_finite_first": 1.0, "lr_range_high": float("nan")}
    assert overfit_verdict(fig, 50).severity == "warning"  # no known cause: the warning stays
    high = overfit_verdict({**fig, "lr": 5.0, "lr_range_high": 1.0}, 50)
    assert high.severity == "info" and "lr 5 is 5x the top" in high.message
    vanish = overfit_verdict({**fig, "grad_ratio_first": 1e-8, "grad_ratio_last": 2e-8}, 50)
    assert vanish.severity == "info" and "the gradients vanish" in vanish.message
    # only at the first backward (a zero-initialised head): not vanishing, the warning stays
    assert overfit_verdict({**fig, "grad_ratio_first": 0.0}, 50).severity == "warning"
    nan = {**fig, "end": float("nan"), "ratio": float("nan")}
    assert overfit_verdict(nan, 50).severity == "info"
    assert "learning rate (0.001, too high" in overfit_verdict(nan, 50).message
    assert "non-finite gradients" in overfit_verdict({**nan, "grads_finite_first": 0.0}, 50).message


def test_diverging_lr_is_an_info_naming_the_lr(make_trainer) -> None:
    torch.manual_seed(0)  # the model's init: the copy either blows up to a finite loss or to NaN
    check = OverfitBatchCheck()
    fit(make_trainer, Classifier(small_cnn(), optimizer="sgd", lr=1e4), digits_loader(), check)
    assert codes(check) == ["not-learning:info"]
    # either way the lr is named as the root cause ("...: lr" after a finite rise, "..., lr" after NaN)
    assert re.search(r"root cause is the learning rate[:,] lr 1e\+04 is 1e\+04x the top", check.findings[0].message)


def test_vanishing_gradients_are_measured_on_the_copy() -> None:
    torch.manual_seed(0)
    layers = [m for i in range(10) for m in (torch.nn.Linear(64 if i == 0 else 32, 32), torch.nn.Sigmoid())]
    deep = torch.nn.Sequential(torch.nn.Flatten(), *layers, torch.nn.Linear(32, 10))  # 10 sigmoids, default init
    fig = overfit_batch(Classifier(deep), _batch(), _adam)
    assert fig["grad_ratio_first"] < 1e-4 and fig["grad_ratio_last"] < 1e-4 and fig["grads_finite_first"] == 1.0
    healthy = overfit_batch(Classifier(small_cnn()), _batch(), _adam)
    assert healthy["grad_ratio_first"] > 1e-4 and healthy["grad_ratio_last"] > 1e-4


def test_nan_input_is_skipped_not_a_warning(make_trainer) -> None:
    """#11 item 4: "loss 2.3 -> nan" after a NaN input is a consequence, not a separate warning."""
    x, y = next(iter(digits_loader(shuffle=False)))
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    check = OverfitBatchCheck()
    fit(make_trainer, Classifier(small_cnn()), loader, check)
    assert codes(check) == ["not-learning:info"]
    assert "non-finite" in check.findings[0].message


def test_sgd_user_optimizer_is_used(make_trainer) -> None:
    check = OverfitBatchCheck(steps=5)
    fit(make_trainer, Classifier(small_cnn(), optimizer="sgd", lr=1e-6), digits_loader(), check)
    assert codes(check) == ["not-learning:warning"]
    assert check.findings[0].figures["lr"] == pytest.approx(1e-6)


def test_manual_optimization_is_info(make_trainer) -> None:
    check = OverfitBatchCheck()
    fit(make_trainer, ManualClassifier(small_cnn()), digits_loader(), check)
    assert codes(check) == ["not-learning:info"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Expected max_batch to be an int >= 1"):
        OverfitBatchCheck(max_batch=0)
    with pytest.raises(TypeError, match="Expected steps to be an int"):
        OverfitBatchCheck(steps="50")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected budget_s to be a finite number > 0"):
        OverfitBatchCheck(budget_s=0)


@pytest.mark.parametrize("model", [lambda: Classifier(IgnoresInput()), lambda: Classifier(dead_mlp())],
                         ids=["ignores-input", "dead-units"])
def test_output_independent_of_input_is_a_consequence_not_a_warning(make_trainer, model) -> None:
    """#11 item 4/Build 3: the loss cannot fall because the output ignores the input: one root cause."""
    check = OverfitBatchCheck()
    fit(make_trainer, model(), digits_loader(image=False), check)
    assert codes(check) == ["not-learning:info"]
    assert "a consequence" in check.findings[0].message

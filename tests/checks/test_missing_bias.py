"""missing-bias (P4): a planted bias-less layer is named; bias-less conv + BatchNorm is fine."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from lightning_tips import TipWarning
from lightning_tips.checks.missing_bias import MissingBiasCheck, layers_without_bias
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit
from tests.helpers.models import Classifier


def _net(bias: bool, norm: bool) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=bias),
        nn.BatchNorm2d(4) if norm else nn.Identity(),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )


def test_pure_function_names_only_unnormalised_bias_free_layers() -> None:
    assert layers_without_bias(_net(bias=False, norm=False)) == ["0"]
    assert layers_without_bias(_net(bias=False, norm=True)) == []
    assert layers_without_bias(_net(bias=True, norm=False)) == []
    assert layers_without_bias(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2, bias=False))) == ["1"]


def _fit(make_trainer: Any, net: nn.Module) -> MissingBiasCheck:
    """2 train batches, no validation, no seeding; warnings pass (to the test's ``pytest.warns``)."""
    check = MissingBiasCheck()
    fit(make_trainer, Classifier(net), DigitsDataModule(), callbacks=[check], seed=None, warns="pass",
        limit_train_batches=2, limit_val_batches=0)
    return check


def test_planted_bias_free_layer_is_reported(make_trainer: Any) -> None:
    with pytest.warns(TipWarning, match=r"^\[missing-bias\] info: 1 layer\(s\) have no bias"):
        check = _fit(make_trainer, _net(bias=False, norm=False))
    [finding] = check.findings
    assert finding.code == "missing-bias" and finding.module == "net.0" and finding.figures == {"layers": 1.0}


@pytest.mark.parametrize("norm", [True, False])
def test_healthy_twins_are_silent(make_trainer: Any, norm: bool) -> None:
    check = _fit(make_trainer, _net(bias=not norm, norm=norm))
    assert check.findings == []

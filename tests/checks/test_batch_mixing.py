"""BatchMixingCheck: sample i's output must not depend on sample j's input (R2.12, P12)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_tips.checks._preflight import CheckSkipped
from lightning_tips.checks.batch_mixing import BatchMixingCheck, batch_mixing, batch_mixing_verdict
from tests.helpers.models import Classifier, ManualClassifier, small_cnn
from tests.helpers.preflight_models import (
    PositionalTokens,
    ReshapeMixer,
    RowsLSTM,
    RowsTransformer,
    TokenBag,
    bn_cnn,
    codes,
    digit_rows_loader,
    digit_tokens_loader,
    digits_loader,
    fit,
    zero_head,
)

# --- pure function ---------------------------------------------------------------------------------


def test_pure_function_on_plain_modules() -> None:
    x = torch.randn(6, 1, 8, 8)
    assert batch_mixing(small_cnn(), x)["leak"] == 0.0
    mixed = batch_mixing(ReshapeMixer(), x)
    assert mixed["leak"] > 0 and batch_mixing_verdict(mixed).severity == "error"
    # BatchNorm in training mode mixes samples; the check runs it in eval mode (and leaves the module as it was)
    net = bn_cnn()
    assert batch_mixing(net, x)["leak"] == 0.0
    assert net.training and net[1].training
    # BatchNorm without running statistics still is not a false alarm
    net2 = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten())
    assert batch_mixing(net2, x)["leak"] == 0.0


def test_softmax_output_still_has_a_gradient() -> None:
    """Rows of a softmax sum to 1: a plain sum would give no gradient; the random weighting does."""
    res = batch_mixing(nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(1)), torch.randn(8, 1, 8, 8))
    assert res["total"] > 0 and res["leak"] == 0.0


def test_dict_inputs_and_embeddings() -> None:
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * 2 + b.mean(0, keepdim=True)  # b is mixed across the batch

    batch = {"inputs": (torch.randn(5, 3), torch.randn(5, 3)), "y": torch.zeros(5)}
    res = batch_mixing(Two(), batch)
    assert res["field"] == "input[1]" and res["leak"] > 0
    tokens = torch.randint(0, 17, (6, 64))
    assert batch_mixing(TokenBag(), tokens)["leak"] == 0.0
    mixed = batch_mixing(TokenBag(mix=True), tokens)
    assert mixed["leak"] > 0 and "embed" in mixed["field"]


def test_unusable_batches_raise_skip() -> None:
    with pytest.raises(CheckSkipped, match="at least 2"):
        batch_mixing(small_cnn(), torch.randn(1, 1, 8, 8))

    class Ignores(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 3)

    with pytest.raises(CheckSkipped, match="does not depend"):
        batch_mixing(Ignores(), torch.randn(4, 3))


# --- through Trainer.fit ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net", "loader"),
    [(ReshapeMixer, digits_loader), (lambda: RowsLSTM(batch_first=False), digit_rows_loader),
     (lambda: RowsTransformer(batch_first=False), digit_rows_loader)],
    ids=["reshape-across-batch", "lstm-batch-first", "transformer-batch-first"],
)
def test_planted_mixing_is_flagged(make_trainer, net, loader) -> None:
    check = BatchMixingCheck()
    fit(make_trainer, Classifier(net()), loader(), check)
    assert codes(check) == ["batch-mixing:error"]
    assert check.findings[0].figures["relative"] > 1e-7


@pytest.mark.parametrize(
    ("net", "loader"),
    [(bn_cnn, digits_loader), (lambda: RowsLSTM(batch_first=True), digit_rows_loader),
     (lambda: RowsTransformer(batch_first=True), digit_rows_loader), (TokenBag, digit_tokens_loader)],
    ids=["cnn-batchnorm", "lstm", "transformer", "embedding"],
)
def test_healthy_twins_are_silent(make_trainer, net, loader) -> None:
    check = BatchMixingCheck()
    fit(make_trainer, Classifier(net()), loader(), check)
    assert codes(check) == []


def test_manual_optimization_uses_forward(make_trainer) -> None:
    check = BatchMixingCheck()
    fit(make_trainer, ManualClassifier(ReshapeMixer()), digits_loader(), check)
    assert codes(check) == ["batch-mixing:error"]


def test_broadcast_position_embedding_is_not_mixing(make_trainer) -> None:
    """#11 item 6: BERT/GPT-2's (1, S, D) position-embedding output was read as sample 0 leaking (an error).
    Here S = 64 = the batch size, the shape that made the old check pick dim 1 as the batch dim."""
    tokens = next(iter(digit_tokens_loader()))
    res = batch_mixing(Classifier(PositionalTokens()), tokens)
    assert res["leak"] == 0.0 and all("positions" not in f for f in res["fields"])
    check = BatchMixingCheck()
    fit(make_trainer, Classifier(PositionalTokens()), digit_tokens_loader(), check)
    assert codes(check) == []
    planted = BatchMixingCheck()
    fit(make_trainer, Classifier(PositionalTokens(mix=True)), digit_tokens_loader(), planted)
    assert codes(planted) == ["batch-mixing:error"]


@pytest.mark.parametrize("batch_size", [64, 16], ids=["S-equals-batch", "D-equals-batch"])
def test_position_embedding_indexed_by_arange_is_shared(make_trainer, batch_size) -> None:
    """Gallery transformer-tokens: ``pos(arange(S))`` is an (S, D) tensor broadcast over the batch, no leading 1.
    Its index does not come from the batch, so it is shared like a parameter — also when one of its dimensions
    has the batch's size (S = 64 = batch size; D = 16 = batch size, the gallery's shape, read as sample dim). The token embedding (of the batch's ids, or of a
    new tensor computed from them) still counts as a per-sample input, so a planted mix is caught."""
    tokens = next(iter(digit_tokens_loader(batch_size=batch_size)))
    for offset in (False, True):
        res = batch_mixing(Classifier(PositionalTokens(flat=True, offset=offset)), tokens)
        assert res["leak"] == 0.0 and res["total"] > 0, res
        assert res["fields"] == ["net.tokens (embedding output)"], res
        mixed = batch_mixing(Classifier(PositionalTokens(flat=True, offset=offset, mix=True)), tokens)
        assert mixed["leak"] > 0 and "tokens" in mixed["field"], mixed
    check = BatchMixingCheck()
    fit(make_trainer, Classifier(PositionalTokens(flat=True)), digit_tokens_loader(batch_size=batch_size), check)
    assert codes(check) == []
    planted = BatchMixingCheck()
    fit(make_trainer, Classifier(PositionalTokens(flat=True, mix=True)), digit_tokens_loader(batch_size=batch_size),
        planted)
    assert codes(planted) == ["batch-mixing:error"]


def test_batch_of_one_does_not_crash_or_warn(make_trainer) -> None:
    check = BatchMixingCheck()
    fit(make_trainer, Classifier(small_cnn()), digits_loader(batch_size=1), check)
    assert [f.severity.value for f in check.findings] in ([], ["info"])
    assert all("skipped" in f.message for f in check.findings)


def test_nonfinite_gradients_are_skipped_not_judged() -> None:
    """#11 item 6: no verdict from NaN figures."""
    with pytest.raises(CheckSkipped, match="not finite"):
        batch_mixing_verdict({"leak": float("nan"), "total": float("nan"), "sample": 3, "field": "input"})
    net = small_cnn()
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = float("nan")  # a NaN weight: every output and gradient is NaN
    with pytest.raises(CheckSkipped, match="not finite"):
        batch_mixing_verdict(batch_mixing(Classifier(net), next(iter(digits_loader(shuffle=False)))))


def test_zero_init_head_is_judged_not_skipped(make_trainer) -> None:
    """A zero-initialised head blocks every gradient; the check fills it with noise on its copy and judges."""
    res = batch_mixing(Classifier(zero_head(small_cnn())), next(iter(digits_loader(shuffle=False))))
    assert res["total"] > 0 and res["leak"] == 0.0
    check = BatchMixingCheck()
    fit(make_trainer, Classifier(zero_head(small_cnn())), digits_loader(), check)
    assert codes(check) == []

"""DataChecks: a planted data bug and its healthy twin per finding code, through real fits; the pure
functions without a Trainer; the pure-observer property; bad inputs; DDP agreement."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips.checks.data import (
    DataChecks,
    FeatureStats,
    class_targets,
    find_duplicates,
    imbalance_pvalue,
    imbalance_ratio,
    normalization_verdict,
    prior_bias_gap,
    sample_hashes,
    sampler_balances,
    sampler_shuffles,
)
from lightning_tips.views.first_batch import FirstBatchView
from tests.helpers import fitting
from tests.helpers.data import DigitStream, NoisyDigits, breast_cancer_tensors, digits_tensors
from tests.helpers.data_bugs import (
    AutoEncoder,
    DictClassifier,
    DictDataset,
    PackedGRUClassifier,
    TokenClassifier,
    balanced_loader,
    digit_tokens,
    digits_split,
    digits_with_nan,
    duplicated_digits,
    imbalanced_breast_cancer,
    leaky_val,
    loader,
    packed_digits_loader,
    set_prior_bias_,
)
from tests.helpers.models import Classifier, mlp, small_cnn

REPO = Path(__file__).resolve().parents[2]


def fit(make_trainer: Callable[..., pl.Trainer], model: pl.LightningModule, train: Any, val: Any = None,
        checks: DataChecks | None = None, view: FirstBatchView | None = None, **trainer_kw: Any) -> DataChecks:
    """Fit with ``checks`` (and the first-batch ``view`` beside them, as ``Preflight`` composes it)."""
    checks = checks or DataChecks(first_batch=False)
    callbacks: list[Any] = [checks] if view is None else [checks, view]
    kw: dict[str, Any] = {"limit_train_batches": 2, "limit_val_batches": 1, **trainer_kw}
    fitting.fit(make_trainer, model, train, val, callbacks=callbacks, seed=None, warns="ignore", **kw)
    return checks


class CardChecks(DataChecks):
    """DataChecks that keeps its card lines (the printed table may wrap them)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lines: list[Any] = []

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> Any:
        line = super().run_check(trainer, pl_module, batch)
        self.lines.append(line)
        return line


def by_code(checks: DataChecks, code: str) -> list[Any]:
    return [f for f in checks.findings if f.code == code]


def digits_model() -> Classifier:
    return Classifier(small_cnn())


# --- pure functions --------------------------------------------------------------------------------
def test_sample_hashes_and_duplicates() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
    y = torch.tensor([0, 1, 1])
    full, inputs = sample_hashes((x, y), 3), sample_hashes(x, 3)
    assert full[0] != full[2] and inputs[0] == inputs[2]  # same inputs, different label
    assert find_duplicates(inputs) == (1, (2, 0))
    assert find_duplicates(full) == (0, None)
    assert sample_hashes(torch.zeros(0, 3), 0) == []
    # bf16 and bool tensors hash too; -0.0 and 0.0 differ in bytes (exact content, documented)
    assert len(sample_hashes((x.bfloat16(), x > 2), 3)) == 3


def test_class_targets() -> None:
    assert class_targets(torch.tensor([3, 1, -100])).tolist() == [3, 1]
    assert class_targets(torch.tensor([True, False])).tolist() == [1, 0]
    assert class_targets(torch.tensor([[1.0], [0.0]])).tolist() == [1, 0]
    assert class_targets(torch.tensor([[2], [0]])) is None  # (N, 1) ints other than 0/1: not binary
    assert class_targets(torch.tensor([0.5, 1.0])) is None  # regression
    assert class_targets(torch.zeros(4, 8, 8, dtype=torch.long)) is None  # segmentation masks


def test_imbalance_and_prior_gap() -> None:
    assert imbalance_ratio(torch.tensor([95, 5])) == 19.0
    assert math.isnan(imbalance_ratio(torch.tensor([10, 0])))
    counts = torch.tensor([950, 50])
    assert prior_bias_gap(torch.log(torch.tensor([0.95, 0.05])) - 3.0, counts) < 1e-6  # shift-invariant
    assert prior_bias_gap(torch.zeros(2), counts) == pytest.approx(math.log(19) / 2)
    assert prior_bias_gap(torch.zeros(1), counts) == pytest.approx(math.log(950 / 50))  # single logit: log-odds
    assert prior_bias_gap(torch.tensor([math.log(50 / 950)]), counts) < 1e-6
    assert prior_bias_gap(torch.zeros(3), torch.tensor([1, 2, 3, 4])) == math.inf  # fewer outputs than classes


def test_imbalance_pvalue_is_the_noise_model() -> None:
    """The skew must be beyond sampling noise: a 3.5 ratio of 20 labels of 4 balanced classes is chance."""
    assert imbalance_pvalue(torch.tensor([7, 6, 5, 2])) == 1.0
    assert imbalance_pvalue(torch.tensor([80, 20])) > 0.1  # 4:1 of 100 labels: not beyond a 3:1 split
    assert imbalance_pvalue(torch.tensor([800, 200])) < 1e-3  # the same ratio from 1000 labels is
    assert imbalance_pvalue(torch.tensor([357, 19])) < 1e-20
    assert math.isnan(imbalance_pvalue(torch.tensor([10, 0])))


def test_feature_stats_match_torch() -> None:
    x, _ = breast_cancer_tensors(normalize=False)
    s = FeatureStats()
    for chunk in x.split(100):
        s.update(chunk)
    torch.testing.assert_close(s.mean, x.double().mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.std, x.double().std(0, unbiased=False), rtol=1e-5, atol=1e-6)
    # two "ranks" summed give the same figures
    a, b = FeatureStats(), FeatureStats()
    a.update(x[:200])
    b.update(x[200:])
    _, mean, std = FeatureStats.unpack(a.pack() + b.pack())
    torch.testing.assert_close(std, x.double().std(0, unbiased=False), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean, x.double().mean(0))
    per_feature, _, pooled = s.dynamic_range()
    assert per_feature < 1e4 < pooled  # breast cancer: each feature fine, pooled range 2e4
    # NCHW: one channel; NaN values are left out of the statistics
    img = torch.tensor([[[[1.0, math.nan], [3.0, 5.0]]]])
    t = FeatureStats()
    t.update(img)
    assert t.num_features == 1 and t.mean.tolist() == [3.0]


def test_normalization_verdict() -> None:
    # digits / 16: a border pixel nearly constant (mean 9.8e-05, std 0.0025, as in #12) beside real pixels
    v = normalization_verdict(torch.tensor([9.8e-05, 0.3, 0.6, 0.0]), torch.tensor([0.0025, 0.4, 0.35, 0.0]))
    assert not v.flagged and v.ignored == 2 and v.varying == 2 and v.bad == []
    # raw 0..16 pixels: the varying features' RMS 7.7 is beyond unit scale
    assert normalization_verdict(torch.tensor([4.9]), torch.tensor([6.0])).flagged
    # one feature at 50 +- 1 beside unit-scale ones: far from unit scale, and it carries the energy
    v = normalization_verdict(torch.tensor([0.1, 50.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert v.flagged and v.bad == [1] and v.bad_share > 0.99
    # standardised, and [0, 1] images: silent
    assert not normalization_verdict(torch.zeros(5), torch.ones(5)).flagged
    assert not normalization_verdict(torch.tensor([0.13]), torch.tensor([0.31])).flagged


def test_sampler_helpers() -> None:
    ds = TensorDataset(torch.zeros(4))
    assert sampler_shuffles(DataLoader(ds, shuffle=False)) is False
    assert sampler_shuffles(DataLoader(ds, shuffle=True)) is True
    x, y = imbalanced_breast_cancer()
    assert sampler_balances(balanced_loader(x, y)) and not sampler_balances(DataLoader(ds))
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from torch.utils.data import DistributedSampler, SequentialSampler

    wrapped = DataLoader(ds, sampler=DistributedSamplerWrapper(SequentialSampler(ds), num_replicas=2, rank=0))
    assert sampler_shuffles(wrapped) is False
    plain = DataLoader(ds, sampler=DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True))
    assert sampler_shuffles(plain) is True


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="Expected max_batches to be an int >= 1"):
        DataChecks(max_batches=0)
    with pytest.raises(TypeError, match="Expected max_batches to be an int"):
        DataChecks(max_batches=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected max_scan_s to be a finite number > 0"):
        DataChecks(max_scan_s=0)


# --- planted bugs and healthy twins ----------------------------------------------------------------
def test_healthy_digits_are_silent(make_trainer: Callable[..., pl.Trainer]) -> None:
    pl.seed_everything(0)
    (x, y), (xv, yv) = digits_split()
    checks = fit(make_trainer, digits_model(), loader(x, y), loader(xv, yv, shuffle=False))
    assert checks.findings == []  # the twin of every code below, no-seed included


def test_nonfinite_input(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = digits_with_nan()
    checks = fit(make_trainer, digits_model(), loader(x, y))
    (f,) = by_code(checks, "nonfinite-input")
    assert f.severity.value == "error" and "batch[0] (2 values)" in f.message and "train" in f.message
    assert f.figures["count"] == 2


def test_duplicates_within_train(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = duplicated_digits()
    _, (xv, yv) = digits_split()
    checks = fit(make_trainer, digits_model(), loader(x, y), loader(xv, yv, shuffle=False))
    (f,) = by_code(checks, "duplicate-data")
    assert f.module == "train" and f.figures["count"] == 30 and f.figures["samples"] == 330
    assert f.figures["fraction"] == pytest.approx(30 / 330)
    assert "train sample 3" in f.message  # dataset indices 300..329 repeat 0..29


def test_train_val_overlap(make_trainer: Callable[..., pl.Trainer]) -> None:
    (x, y), _ = digits_split()
    xv, yv = leaky_val()
    checks = fit(make_trainer, digits_model(), loader(x, y), loader(xv, yv, shuffle=False))
    (f,) = by_code(checks, "duplicate-data")
    assert f.module == "train/val" and f.figures["count"] == 20 and f.figures["samples"] == 100
    assert "val sample 80 has the inputs of train sample 100" in f.message


def test_resampling_with_replacement_is_not_a_duplicate(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = imbalanced_breast_cancer()
    checks = fit(make_trainer, Classifier(mlp(30, 2)), balanced_loader(x, y))
    assert by_code(checks, "duplicate-data") == [] and by_code(checks, "class-imbalance") == []


def test_class_imbalance(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = imbalanced_breast_cancer()
    checks = fit(make_trainer, Classifier(mlp(30, 2)), loader(x, y))
    (f,) = by_code(checks, "class-imbalance")
    assert f.figures["ratio"] == pytest.approx(357 / 19, rel=1e-6) and f.module == "net.5"
    assert "net.5.bias" in f.message and "94.9%" in f.message
    assert f.severity.value == "warning" and f.figures["p_value"] < 1e-20


def test_class_imbalance_from_few_labels_is_only_info(make_trainer: Callable[..., pl.Trainer]) -> None:
    """Gallery batch-size-1: 20 sampled labels of 4 balanced classes came out 7/6/5/2 (max/min 3.5): chance,
    not a skew (a warning before). The planted twin (357/19 of 376 labels) still warns (test_class_imbalance)."""
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 7 + [1] * 6 + [3] * 5 + [2] * 2)
    x = torch.randn(20, 30, generator=g) + y.float().unsqueeze(1)
    checks = fit(make_trainer, Classifier(mlp(30, 4)), DataLoader(TensorDataset(x, y), batch_size=1, shuffle=True))
    (f,) = by_code(checks, "class-imbalance")
    assert f.severity.value == "info" and "no verdict" in f.message and "20 < 30 labels" in f.message
    assert f.figures["ratio"] == 3.5 and f.figures["p_value"] == 1.0 and f.figures["labels"] == 20


def test_class_imbalance_silent_with_prior_bias(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = imbalanced_breast_cancer()
    net = mlp(30, 2)
    set_prior_bias_(net, y, 2)
    checks = fit(make_trainer, Classifier(net), loader(x, y))
    assert by_code(checks, "class-imbalance") == []


def test_class_imbalance_silent_with_balanced_sampler(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = imbalanced_breast_cancer()
    checks = fit(make_trainer, Classifier(mlp(30, 2)), balanced_loader(x, y))
    assert by_code(checks, "class-imbalance") == []


class KeyedDataset(torch.utils.data.Dataset):
    """Samples as dicts with keys the pack cannot guess: ``{"feats": x, "cls": y}``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"feats": self.x[i], "cls": self.y[i]}


class KeyedClassifier(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # type: ignore[override]
        return self.loss_fn(self(batch["feats"]), batch["cls"])


def test_named_keys_give_the_label_checks_their_targets(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = imbalanced_breast_cancer()
    data = DataLoader(KeyedDataset(x, y), batch_size=64, shuffle=True)
    unnamed = fit(make_trainer, KeyedClassifier(mlp(30, 2)), data, checks=CardChecks(first_batch=False))
    assert by_code(unnamed, "class-imbalance") == []  # no target key recognised: labels n/a
    assert "name a dict's with target_key=" in unnamed.lines[0].detail  # the card says how to name them
    view = FirstBatchView(input_key="feats", target_key="cls")
    named = fit(make_trainer, KeyedClassifier(mlp(30, 2)), data,
                checks=DataChecks(first_batch=True, input_key="feats", target_key="cls"), view=view)
    assert [f.severity.value for f in by_code(named, "class-imbalance")] == ["warning"]
    assert [f.code for f in [*named.findings, *view.findings] if f.code == "view-skipped"] == []
    with pytest.raises(TypeError, match="target_key"):
        DataChecks(target_key=1)  # type: ignore[arg-type]


def test_hugging_face_style_batches(make_trainer: Callable[..., pl.Trainer]) -> None:
    """``{"input_ids", "attention_mask", "labels"}`` batches: labels read, token ids not scaled."""
    from tests.helpers.data_layouts import TinyHFClassifier, TokenDigits

    view = FirstBatchView()
    checks = fit(make_trainer, TinyHFClassifier(), DataLoader(TokenDigits(), batch_size=64, shuffle=True),
                 checks=DataChecks(first_batch=True), view=view)
    assert [f for f in [*checks.findings, *view.findings] if f.skipped or f.severity.value != "info"] == []


def test_unnormalized_input(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = breast_cancer_tensors(normalize=False)
    checks = fit(make_trainer, Classifier(mlp(30, 2)), loader(x, y))
    (f,) = by_code(checks, "unnormalized-input")
    assert f.module == "batch[0]" and f.figures["bad_features"] >= 8 and f.figures["scale"] > 100
    assert "worst batch[0] feature 23" in f.message  # "worst area": mean 881, std 569
    assert "dynamic range" in f.message and "tanh(x/C)" in f.advice and f.figures["dynamic_range"] > 1e4
    healthy = fit(make_trainer, Classifier(mlp(30, 2)), loader(*breast_cancer_tensors(normalize=True)))
    assert by_code(healthy, "unnormalized-input") == []


def _digits(scale: str, image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_tensors(normalize=scale == "standardised", image=image)
    if scale == "/16":
        x = x / 16.0
    elif scale == "0..255":
        x = x * 16.0  # bytes-like pixels
    return x[:600], y[:600]


@pytest.mark.parametrize(("scale", "image", "flagged"), [
    ("/16", False, False),  # correctly scaled: nearly constant border pixels must not count (#12)
    ("/16", True, False),  # [0, 1] images
    ("standardised", False, False),
    ("0..16", False, True),  # raw digits: RMS 7.7
    ("0..16", True, True),
    ("0..255", True, True),  # uint8-range images
])
def test_unnormalized_input_judges_the_scale_of_features_that_vary(
    make_trainer: Callable[..., pl.Trainer], scale: str, image: bool, flagged: bool
) -> None:
    x, y = _digits(scale, image)
    model = digits_model() if image else Classifier(mlp(64, 10))
    found = by_code(fit(make_trainer, model, loader(x, y)), "unnormalized-input")
    assert [f.severity.value for f in found] == (["warning"] if flagged else []), [f.message for f in found]
    if flagged and not image:  # raw 0..16: the centre pixels are the worst, the constant border left out
        assert "constant or near-constant left out" in found[0].message and found[0].figures["bad_features"] > 10


def test_unshuffled_data(make_trainer: Callable[..., pl.Trainer]) -> None:
    (x, y), _ = digits_split()
    checks = fit(make_trainer, digits_model(), loader(x, y, shuffle=False))
    (f,) = by_code(checks, "unshuffled-data")
    assert f.severity.value == "warning"
    assert by_code(fit(make_trainer, digits_model(), loader(x, y, shuffle=True)), "unshuffled-data") == []


def test_overfit_batches_is_not_unshuffled_data(make_trainer: Callable[..., pl.Trainer]) -> None:
    """``overfit_batches=2``: Lightning itself swaps the user's shuffling sampler for a sequential
    one; that is Lightning's doing, not the user's data order (#10 item 7)."""
    (x, y), _ = digits_split()
    checks = fit(make_trainer, digits_model(), loader(x, y, shuffle=True), overfit_batches=2)
    assert by_code(checks, "unshuffled-data") == []
    planted = fit(make_trainer, digits_model(), loader(x, y, shuffle=False), limit_train_batches=2)
    assert [f.severity.value for f in by_code(planted, "unshuffled-data")] == ["warning"]


def test_packed_sequences_are_scanned_per_sample(make_trainer: Callable[..., pl.Trainer]) -> None:
    """``(PackedSequence, labels)`` batches: one row per sample (not per time step), no scan error,
    and a NaN inside a sequence is found (#10 item 7)."""
    view = FirstBatchView()
    checks = fit(make_trainer, PackedGRUClassifier(), packed_digits_loader(), checks=DataChecks(first_batch=True),
                 view=view)
    assert [f for f in [*checks.findings, *view.findings] if f.skipped or "could not run" in f.message] == []
    assert by_code(checks, "duplicate-data") == [] and by_code(checks, "nonfinite-input") == []
    planted = packed_digits_loader(nan_at=3)
    (f,) = by_code(fit(make_trainer, PackedGRUClassifier(), planted), "nonfinite-input")
    assert f.severity.value == "error" and "batch[0][0] (1 values)" in f.message


def test_no_seed(make_trainer: Callable[..., pl.Trainer]) -> None:
    (x, y), _ = digits_split()
    (f,) = by_code(fit(make_trainer, digits_model(), loader(x, y)), "no-seed")
    assert f.severity.value == "info"
    pl.seed_everything(0)
    assert by_code(fit(make_trainer, digits_model(), loader(x, y)), "no-seed") == []


# --- pure observer ----------------------------------------------------------------------------------
@pytest.mark.parametrize("generator", [False, True], ids=["global-rng", "loader-generator"])
def test_pure_observer(make_trainer: Callable[..., pl.Trainer], generator: bool) -> None:
    (x, y), (xv, yv) = digits_split()

    def run(with_checks: bool) -> dict[str, torch.Tensor]:
        pl.seed_everything(0)
        gen = torch.Generator().manual_seed(1) if generator else None
        model = digits_model()
        callbacks = [DataChecks()] if with_checks else []
        trainer = make_trainer(callbacks=callbacks, deterministic=True, limit_train_batches=3, limit_val_batches=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, loader(x, y, generator=gen), loader(xv, yv, shuffle=False))
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain, observed = run(False), run(True)
    assert all(torch.equal(plain[k], observed[k]) for k in plain)


def test_run_check_alone_restores_rng_and_loader_generators(make_trainer: Callable[..., pl.Trainer]) -> None:
    """As a child of a composite (no on_train_start of its own), the scan still leaves no trace."""
    (x, y), _ = digits_split()
    gen = torch.Generator().manual_seed(1)
    seen: list[bool] = []

    class Probe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            before, rng = gen.get_state(), torch.get_rng_state()
            DataChecks(first_batch=False).run_check(trainer, pl_module, None)
            seen.append(torch.equal(before, gen.get_state()) and torch.equal(rng, torch.get_rng_state()))

    trainer = make_trainer(callbacks=[Probe()], limit_train_batches=1, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(digits_model(), loader(x, y, generator=gen))
    assert seen == [True]


# --- bad input -------------------------------------------------------------------------------------
def test_dict_batches(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = digits_with_nan()
    train = DataLoader(DictDataset(x, y), batch_size=64, shuffle=False)
    checks = fit(make_trainer, DictClassifier(small_cnn()), train)
    codes = {f.code for f in checks.findings}
    assert {"nonfinite-input", "unshuffled-data"} <= codes
    assert "batch['image']" in by_code(checks, "nonfinite-input")[0].message


def test_unlabeled_batches(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, _ = digits_tensors(normalize=False, image=False)
    x = torch.cat([x[:200], x[:20]])  # duplicates are still found by content
    checks = fit(make_trainer, AutoEncoder(), loader(x))
    codes = {f.code for f in checks.findings}
    assert "duplicate-data" in codes and "class-imbalance" not in codes  # labels: silently not applicable


def test_integer_inputs(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = digit_tokens()
    checks, view = DataChecks(first_batch=True), FirstBatchView()
    fit(make_trainer, TokenClassifier(), loader(x, y), checks=checks, view=view)
    codes = {f.code for f in [*checks.findings, *view.findings]}
    assert "unnormalized-input" not in codes and "view-skipped" not in codes  # token ids: no float stats


def test_iterable_dataset_is_scanned_on_the_batch_training_hands_over(
    make_trainer: Callable[..., pl.Trainer],
) -> None:
    """A stream is never read ahead (its samples would be lost to training): the scan looks at the
    first batch the loop hands over, at step 0, and the card says so."""
    (x, y), _ = digits_split()
    x, y = torch.cat([x[:56], x[:8], x[56:]]), torch.cat([y[:56], y[:8], y[56:]])  # 8 repeats in batch 0
    taken: list[int] = []

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            for i in range(len(x)):
                taken.append(i)
                yield x[i], y[i]

    checks = fit(make_trainer, digits_model(), DataLoader(Stream(), batch_size=64), checks=CardChecks(first_batch=False))
    (f,) = by_code(checks, "duplicate-data")
    assert "of the scan" in f.message and f.figures["count"] == 8 and f.figures["samples"] == 64
    assert by_code(checks, "unshuffled-data") == []  # a stream's order cannot be told from its sampler
    assert taken == list(range(128))  # limit_train_batches=2: training read exactly its two batches
    (line,) = checks.lines  # pre-flight had no batch (a stream): the scan ran once, at step 0
    assert "streams not read ahead: train" in line.detail and line.status == "finding"


def test_scan_error_is_an_info_finding(make_trainer: Callable[..., pl.Trainer]) -> None:
    class Flaky(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x, self.y = digits_split()[0]
            self.calls = 0

        def __len__(self) -> int:
            return 256

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            self.calls += 1
            if self.calls == 200:  # one bad read during the scan, the fit's own reads are fine
                raise OSError("disk hiccup")
            return self.x[i], self.y[i]

    checks = fit(make_trainer, digits_model(), DataLoader(Flaky(), batch_size=64, shuffle=True))
    (f,) = [f for f in by_code(checks, "nonfinite-input") if f.severity.value == "info"]
    assert "disk hiccup" in f.message and f.skipped and f.advice == ""  # a skip, not the code's verdict


def test_data_checks_time_on_digits(make_trainer: Callable[..., pl.Trainer]) -> None:
    """Budget: the scan of 20 + 5 digit batches stays well inside the ~3 s pre-flight budget."""
    from lightning_tips.checks._preflight import first_train_batch

    x, y = digits_tensors()
    seen: list[float] = []

    class Timed(DataChecks):
        def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> Any:
            t0 = time.perf_counter()
            line = super().run_check(trainer, pl_module, batch)
            seen.append(time.perf_counter() - t0)
            assert first_train_batch(trainer, pl_module) is not None
            return line

    fit(make_trainer, digits_model(), loader(x[:1500], y[:1500]), loader(x[1500:], y[1500:], shuffle=False),
        checks=Timed(first_batch=True))
    assert seen and seen[0] < 1.5, seen


# --- DDP -------------------------------------------------------------------------------------------
@pytest.mark.ddp
def test_ddp_ranks_agree(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "PL_GLOBAL_SEED")}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests/helpers/data_bugs.py"), str(out)], env=env,
                          cwd=tmp_path, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"result.json.rank{r}").read_text()) for r in (0, 1)]
    # Lightning's DistributedSampler shuffles the train loader under DDP even with shuffle=False: no
    # unshuffled-data; the NaN sample sits on one rank's shard, and both ranks report it
    assert ranks[0]["codes"] == ranks[1]["codes"] == ["nonfinite-input"]
    nan_msgs = sorted(next(m for m in r["messages"] if "NaN" in m) for r in ranks)
    assert sum("on another rank" in m for m in nan_msgs) == 1
    assert sum("batch[0] (2 values)" in m for m in nan_msgs) == 1


# --- pure observer with datasets that own a generator (issue #10 item 3) ---------------------------
class CountingClassifier(Classifier):
    """Counts the training samples it sees (the real module only: pre-flight works on copies)."""

    def __init__(self) -> None:
        super().__init__(mlp(64, 10))
        self.samples_seen = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # type: ignore[override]
        self.samples_seen += len(batch[1])
        return super().training_step(batch, batch_idx)


def _owned_rng_fit(make_trainer: Callable[..., pl.Trainer], kind: str, recipe: bool,
                   val: bool = False) -> tuple[CountingClassifier, Any]:
    import lightning_tips as lt

    pl.seed_everything(0)
    data = NoisyDigits() if kind == "map" else DigitStream()
    train = DataLoader(data, batch_size=32, shuffle=kind == "map")
    val_loader = DataLoader(NoisyDigits(64, seed=7), batch_size=32) if val else None
    model = CountingClassifier()
    trainer = make_trainer(deterministic=True, callbacks=[lt.Recipe()] if recipe else [],
                           limit_val_batches=1 if val else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train, val_loader)
    return model, data


@pytest.mark.parametrize(("kind", "val"), [("map", False), ("map", True), ("stream", False)])
def test_recipe_leaves_a_dataset_with_its_own_generator_untouched(
    make_trainer: Callable[..., pl.Trainer], kind: str, val: bool
) -> None:
    """A dataset drawing noise from its own generator, map-style or streaming: the final weights are
    bit-identical with and without ``Recipe()``, and every sample of a read-once stream reaches training."""
    plain, plain_data = _owned_rng_fit(make_trainer, kind, recipe=False, val=val)
    watched, watched_data = _owned_rng_fit(make_trainer, kind, recipe=True, val=val)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name
    assert watched.samples_seen == plain.samples_seen
    if kind == "stream":
        assert watched.samples_seen == watched_data.cursor == len(watched_data.x) == 128
    else:
        assert torch.equal(plain_data.g.get_state(), watched_data.g.get_state())


def test_first_batch_picture_is_readable(make_trainer: Callable[..., pl.Trainer]) -> None:
    """32 digits drawn as titled panels with a value scale, not a 55x55 px thumbnail (#12)."""
    import numpy as np
    from PIL import Image

    from lightning_tips._loggers import files_dir

    (x, y), _ = digits_split()
    trainer = make_trainer(limit_train_batches=1, limit_val_batches=0, callbacks=[FirstBatchView()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(digits_model(), loader(x, y, shuffle=False))
    (png,) = files_dir(trainer).glob("tips_first_batch_step*.png")
    arr = np.asarray(Image.open(png))
    assert arr.shape[0] >= 600 and arr.shape[1] >= 600  # ~1.3 inch (130 px) per 8x8 digit
    assert "32 of 64 samples" in png.with_suffix(".txt").read_text()


def test_independent_copy_shares_data_and_copies_state() -> None:
    """The copy a scan reads shares every sample tensor (no memory doubling, even past the walk's
    container budget) and owns its generators and counters."""
    from lightning_tips._batch import independent_copy, peek_batches, stream_reason

    ds = NoisyDigits(8)
    ds.items = [torch.zeros(2) for _ in range(30_000)]  # type: ignore[attr-defined]
    ds.calls = 0  # type: ignore[attr-defined]
    copied = independent_copy((ds,))
    assert copied is not None
    (c,) = copied
    assert c.x is ds.x and all(a is b for a, b in zip(c.items, ds.items)) and c.g is not ds.g
    ds.owner = pl.Trainer(logger=False)  # type: ignore[attr-defined]  # a dataset pointing back: shared, not copied
    ds.augment = torch.nn.Linear(2, 2)  # type: ignore[attr-defined]
    (c,) = independent_copy((ds,)) or (None,)
    assert c is not None and c.owner is ds.owner and c.augment is ds.augment and c.g is not ds.g
    state = ds.g.get_state()
    batches = list(peek_batches(DataLoader(ds, batch_size=4, shuffle=True)))
    assert len(batches) == 2 and torch.equal(ds.g.get_state(), state)
    assert stream_reason(DataLoader(DigitStream(), batch_size=4)) is not None
    with pytest.raises(ValueError, match="IterableDataset"):
        next(peek_batches(DataLoader(DigitStream(), batch_size=4)))

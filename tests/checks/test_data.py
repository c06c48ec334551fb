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
    imbalance_ratio,
    normalization_verdict,
    prior_bias_gap,
    sample_hashes,
    sampler_balances,
    sampler_shuffles,
)
from tests.helpers.data import breast_cancer_tensors, digits_tensors
from tests.helpers.data_bugs import (
    AutoEncoder,
    DictClassifier,
    DictDataset,
    TokenClassifier,
    balanced_loader,
    digit_tokens,
    digits_split,
    digits_with_nan,
    duplicated_digits,
    imbalanced_breast_cancer,
    leaky_val,
    loader,
    set_prior_bias_,
)
from tests.helpers.models import Classifier, mlp, small_cnn

REPO = Path(__file__).resolve().parents[2]


def fit(make_trainer: Callable[..., pl.Trainer], model: pl.LightningModule, train: Any, val: Any = None,
        checks: DataChecks | None = None, **trainer_kw: Any) -> DataChecks:
    checks = checks or DataChecks(first_batch=False)
    kw: dict[str, Any] = {"limit_train_batches": 2, "limit_val_batches": 1, "callbacks": [checks], **trainer_kw}
    trainer = make_trainer(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train, val)
    return checks


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
    bad, constant = normalization_verdict(torch.tensor([0.1, 4.9, 50.0, 2.0]), torch.tensor([1.0, 6.0, 1.0, 0.0]))
    assert bad == [2] and constant == 1  # raw digits' 4.9 +- 6 passes; 50 +- 1 does not; constant left out
    assert sorted(normalization_verdict(torch.zeros(3), torch.tensor([0.05, 1.0, 20.0]))[0]) == [0, 2]


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


def test_unnormalized_input(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = breast_cancer_tensors(normalize=False)
    checks = fit(make_trainer, Classifier(mlp(30, 2)), loader(x, y))
    (f,) = by_code(checks, "unnormalized-input")
    assert f.module == "batch[0]" and f.figures["bad_features"] >= 10
    assert "batch[0] feature 23" in f.message  # "worst area": mean 881, std 569
    assert "dynamic range" in f.message and "tanh(x/C)" in f.advice and f.figures["dynamic_range"] > 1e4
    healthy = fit(make_trainer, Classifier(mlp(30, 2)), loader(*breast_cancer_tensors(normalize=True)))
    assert by_code(healthy, "unnormalized-input") == []


def test_raw_digits_pass_as_one_channel(make_trainer: Callable[..., pl.Trainer]) -> None:
    (x, y), _ = digits_split(normalize=False)
    checks = fit(make_trainer, digits_model(), loader(x, y))
    assert by_code(checks, "unnormalized-input") == []  # mean 4.9 < 3 x std 6.0, std in [0.1, 10]


def test_unshuffled_data(make_trainer: Callable[..., pl.Trainer]) -> None:
    (x, y), _ = digits_split()
    checks = fit(make_trainer, digits_model(), loader(x, y, shuffle=False))
    (f,) = by_code(checks, "unshuffled-data")
    assert f.severity.value == "warning"
    assert by_code(fit(make_trainer, digits_model(), loader(x, y, shuffle=True)), "unshuffled-data") == []


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
    checks = DataChecks(first_batch=True)
    fit(make_trainer, TokenClassifier(), loader(x, y), checks=checks)
    codes = {f.code for f in checks.findings}
    assert "unnormalized-input" not in codes and "view-skipped" not in codes  # token ids: no float stats


def test_iterable_dataset(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = duplicated_digits()

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return iter(zip(x, y))

    checks = fit(make_trainer, digits_model(), DataLoader(Stream(), batch_size=64))
    (f,) = by_code(checks, "duplicate-data")
    assert "of the scan" in f.message and f.figures["count"] == 30  # positions, no dataset index
    assert by_code(checks, "unshuffled-data") == []  # a stream's order cannot be told from its sampler


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
    assert "disk hiccup" in f.message


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

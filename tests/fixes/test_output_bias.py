"""OutputBiasInit (R2.5): the untrained model predicts the prior; callback == mixin == function."""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from lightning_tips.fixes.output_bias import OutputBiasInit, infer_task, init_output_bias_, target_stats
from tests.helpers.fitting import fit
from tests.helpers.fixes_models import (
    BCEModule,
    BiasMixinClassifier,
    DictBatchClassifier,
    DictDataset,
    Regressor,
    RNGProbe,
    Snapshot,
    breast_cancer_binary,
    conv_only,
    digits_mlp,
    imbalanced_digits,
    loader,
    multilabel_digits,
    regression_data,
)
from tests.helpers.models import Classifier


def _fit(make_trainer, model, train, callbacks, **kw):
    """2 steps (override with max_steps), no seeding; warnings dropped."""
    return fit(make_trainer, model, train, callbacks=callbacks, seed=None, warns="ignore",
               **{"max_steps": 2, **kw}).trainer


def _codes(cb):
    return [(f.code, f.severity.value) for f in cb.findings]


def _prior(y, c):
    return torch.bincount(y, minlength=c).float() / len(y)


# --- the pure function ----------------------------------------------------------------------------


def test_multiclass_softmax_of_bias_is_the_prior():
    _, y = imbalanced_digits()
    layer = nn.Linear(64, 10)
    bias = init_output_bias_(layer, y)
    assert torch.allclose(torch.softmax(layer.bias, 0), _prior(y, 10), atol=1e-5)
    assert torch.equal(bias, layer.bias.detach())
    assert _prior(y, 10).max() / _prior(y, 10).min() > 5  # the data really is imbalanced


def test_multiclass_center_keeps_softmax_and_zero_mean():
    _, y = imbalanced_digits()
    layer = nn.Linear(64, 10)
    init_output_bias_(layer, y, center=True)
    assert abs(float(layer.bias.detach().mean())) < 1e-6
    assert torch.allclose(torch.softmax(layer.bias, 0), _prior(y, 10), atol=1e-5)


def test_counts_and_probabilities_give_the_same_bias():
    _, y = imbalanced_digits()
    counts = torch.bincount(y, minlength=10).float()
    a, b, c = nn.Linear(4, 10), nn.Linear(4, 10), nn.Linear(4, 10)
    init_output_bias_(a, y)
    init_output_bias_(b, counts)
    init_output_bias_(c, counts / counts.sum(), task="multiclass")
    assert torch.allclose(a.bias, b.bias, atol=1e-6) and torch.allclose(a.bias, c.bias, atol=1e-5)


def test_binary_sigmoid_of_bias_is_p():
    _, y = breast_cancer_binary()
    p = float(y.mean())
    for targets in (y, y.long(), y[:, None]):
        layer = nn.Linear(30, 1)
        init_output_bias_(layer, targets)
        assert abs(float(torch.sigmoid(layer.bias.detach())) - p) < 1e-6
        assert abs(float(layer.bias.detach()) - math.log(p / (1 - p))) < 1e-5


def test_multilabel_per_label_log_odds():
    _, y = multilabel_digits()
    layer = nn.Linear(64, 3)
    init_output_bias_(layer, y)
    assert torch.allclose(torch.sigmoid(layer.bias), y.mean(0), atol=1e-6)
    assert infer_task(y, 3) == "multilabel" and infer_task(y.long(), 3) == "multilabel"


def test_regression_bias_is_the_target_mean():
    _, y = regression_data()
    layer = nn.Linear(6, 2)
    init_output_bias_(layer, y)
    assert torch.allclose(layer.bias, y.mean(0), atol=1e-5)
    single = nn.Linear(6, 1)
    init_output_bias_(single, y[:, 0])
    assert abs(float(single.bias.detach()) - float(y[:, 0].mean())) < 1e-5


def test_conv_1x1_head_per_channel():
    y = torch.randint(0, 4, (2, 5, 5), generator=torch.Generator().manual_seed(0))  # segmentation maps
    head = nn.Conv2d(8, 4, 1)
    init_output_bias_(head, y)
    assert torch.allclose(torch.softmax(head.bias, 0), _prior(y.flatten(), 4), atol=1e-5)


def test_ignore_index_targets_are_left_out():
    layer = nn.Linear(4, 2)
    init_output_bias_(layer, torch.tensor([0, 0, 0, 1, -100, -100]))
    assert torch.allclose(torch.softmax(layer.bias, 0), torch.tensor([0.75, 0.25]), atol=1e-5)


def test_unseen_class_gets_a_finite_bias():
    layer = nn.Linear(4, 3)
    init_output_bias_(layer, torch.tensor([0, 1, 1]))
    assert torch.isfinite(layer.bias).all() and float(torch.softmax(layer.bias.detach(), 0)[2]) < 1e-5


@pytest.mark.parametrize(
    ("layer", "targets", "task", "match"),
    [
        (nn.Linear(4, 10), torch.randn(32), "multiclass", "integer class indices"),
        (nn.Linear(4, 10), torch.randn(32), "auto", "float targets of shape"),
        (nn.Linear(4, 3), torch.tensor([0, 5]), "auto", r"class indices in \[0, 3\)"),
        (nn.Linear(4, 1, bias=False), torch.tensor([0, 1]), "auto", "with a bias"),
        (nn.Linear(4, 2), torch.tensor([0.5, 2.0]), "binary", "single-output"),
        (nn.Linear(4, 2), torch.tensor([[0.5, 2.0]]), "multilabel", r"in \[0, 1\]"),
        (nn.Linear(4, 2), torch.tensor([0, 1]), "bogus", "Expected task"),
        (nn.Linear(4, 2), torch.tensor([], dtype=torch.long), "multiclass", "at least one target"),
    ],
)
def test_bad_input_raises_value_error(layer, targets, task, match):
    before = None if layer.bias is None else layer.bias.detach().clone()
    with pytest.raises(ValueError, match=match):
        init_output_bias_(layer, targets, task)
    if before is not None:
        assert torch.equal(layer.bias, before)  # untouched


def test_target_stats_add_up_over_batches():
    _, y = imbalanced_digits()
    whole = target_stats(y, 10, "multiclass")
    halves = [target_stats(part, 10, "multiclass") for part in y.chunk(2)]
    assert torch.equal(whole[0], halves[0][0] + halves[1][0]) and whole[2] == halves[0][2] + halves[1][2]


# --- the callback, through Trainer.fit ------------------------------------------------------------


def test_callback_multiclass_on_imbalanced_digits(make_trainer):
    x, y = imbalanced_digits()
    torch.manual_seed(0)
    model = Classifier(digits_mlp())
    cb, snap = OutputBiasInit(), Snapshot()
    trainer = _fit(make_trainer, model, loader(x, y), [cb, snap])
    assert trainer.global_step == 2
    bias = snap.at_train_start["net.5.bias"]
    assert torch.allclose(torch.softmax(bias, 0), _prior(y, 10), atol=1e-5)
    assert _codes(cb) == [("output-bias", "info")]
    f = cb.findings[0]
    assert "set the bias of `net.5`" in f.message and "multiclass" in f.message
    assert f.module == "net.5" and f.figures["prior_0"] == pytest.approx(float(_prior(y, 10)[0]), abs=1e-5)
    assert cb.applied_bias == pytest.approx(bias.tolist(), abs=1e-6)


def test_callback_equals_mixin_equals_function(make_trainer):
    x, y = imbalanced_digits()
    torch.manual_seed(0)
    net = digits_mlp()
    # function
    by_function = copy.deepcopy(net)
    init_output_bias_(by_function[5], y)
    # mixin
    by_mixin = BiasMixinClassifier(copy.deepcopy(net), y)
    # callback (the scan covers all ~560 samples: 9 batches < max_batches)
    snap = Snapshot()
    _fit(make_trainer, Classifier(copy.deepcopy(net)), loader(x, y), [OutputBiasInit(), snap])
    by_callback = snap.at_train_start["net.5.bias"]
    assert torch.allclose(by_function[5].bias, by_mixin.net[5].bias, atol=1e-6)
    assert torch.allclose(by_function[5].bias, by_callback, atol=1e-6)
    # and only the bias changed
    assert torch.equal(snap.at_train_start["net.5.weight"], net[5].weight)


def test_callback_binary_on_breast_cancer(make_trainer):
    x, y = breast_cancer_binary()
    torch.manual_seed(0)
    model = BCEModule(nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1)))
    cb, snap = OutputBiasInit(), Snapshot()
    _fit(make_trainer, model, loader(x, y), [cb, snap])
    assert abs(float(torch.sigmoid(snap.at_train_start["net.2.bias"])) - float(y.mean())) < 1e-5
    assert "binary" in cb.findings[0].message


def test_callback_multilabel(make_trainer):
    x, y = multilabel_digits()
    torch.manual_seed(0)
    cb, snap = OutputBiasInit(), Snapshot()
    _fit(make_trainer, BCEModule(digits_mlp(num_classes=3)), loader(x, y, batch_size=128), [cb, snap])
    assert torch.allclose(torch.sigmoid(snap.at_train_start["net.5.bias"]), y.mean(0), atol=1e-5)
    assert "multilabel" in cb.findings[0].message


def test_callback_regression(make_trainer):
    x, y = regression_data()
    torch.manual_seed(0)
    cb, snap = OutputBiasInit(), Snapshot()
    _fit(make_trainer, Regressor(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))), loader(x, y), [cb, snap])
    assert torch.allclose(snap.at_train_start["net.2.bias"], y.mean(0), atol=1e-4)
    assert cb.findings[0].figures["variance"] == pytest.approx(float(y.var(0, unbiased=False).mean()), rel=1e-3)


def test_callback_bounded_scan_and_given_prior(make_trainer):
    x, y = imbalanced_digits()
    snap = Snapshot()
    cb = OutputBiasInit(max_batches=1)
    _fit(make_trainer, Classifier(digits_mlp()), loader(x, y, shuffle=False), [cb, snap])
    assert "in 1 batch(es)" in cb.findings[0].message
    assert torch.allclose(torch.softmax(snap.at_train_start["net.5.bias"], 0), _prior(y[:64], 10), atol=1e-5)

    prior = [0.5] + [0.5 / 9] * 9
    snap2 = Snapshot()
    _fit(make_trainer, Classifier(digits_mlp()), loader(x, y), [OutputBiasInit(prior=prior), snap2])
    assert torch.allclose(torch.softmax(snap2.at_train_start["net.5.bias"], 0), torch.tensor(prior), atol=1e-5)


def test_init_loss_is_the_prior_entropy(make_trainer):
    """The intent of R2.5 (the init-loss check's expectation): small last-layer weights + prior bias
    -> the initial cross-entropy is the prior's entropy, far below log(10)."""
    x, y = imbalanced_digits()
    torch.manual_seed(0)
    net = digits_mlp()
    nn.init.normal_(net[5].weight, std=1e-3)
    model = Classifier(net)
    cb = OutputBiasInit()
    losses: dict[str, float] = {}

    class InitialLoss(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            with torch.no_grad():
                losses["ce"] = float(F.cross_entropy(pl_module(x), y))

    _fit(make_trainer, model, loader(x, y), [cb, InitialLoss()])
    p = _prior(y, 10)
    entropy = float(-(p * p.log()).sum())
    assert abs(losses["ce"] - entropy) < 0.05
    assert cb.findings[0].figures["entropy"] == pytest.approx(entropy, abs=1e-4)
    assert entropy < math.log(10) - 0.3  # the healthy value differs from the uniform one


def test_scan_leaves_every_rng_as_it_was(make_trainer):
    x, y = imbalanced_digits()
    before, snap = RNGProbe(), Snapshot()
    g = torch.Generator().manual_seed(123)
    train = loader(x, y, generator=g)  # a shuffling loader with its own generator

    class GeneratorProbe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.state = g.get_state()

    g_before, g_after = GeneratorProbe(), GeneratorProbe()
    _fit(make_trainer, Classifier(digits_mlp()), train, [before, g_before, OutputBiasInit(), snap, g_after])
    assert torch.equal(before.rng["train_start"], snap.rng["train_start"])
    assert torch.equal(g_before.state, g_after.state)

    # the global RNG too, with a plain shuffling loader (RandomSampler draws its seed from it)
    before2, snap2 = RNGProbe(), Snapshot()
    _fit(make_trainer, Classifier(digits_mlp()), loader(x, y), [before2, OutputBiasInit(), snap2])
    assert torch.equal(before2.rng["train_start"], snap2.rng["train_start"])


# --- bad input: info findings, training goes on ---------------------------------------------------


def _assert_skipped(cb, trainer, why):
    assert trainer.global_step == 2  # training went on
    assert _codes(cb) == [("output-bias", "info")]
    assert cb.findings[0].message.startswith("skipped the output-bias init")
    assert why in cb.findings[0].message, cb.findings[0].message
    assert cb.applied_bias is None


def test_skip_no_linear_output_layer(make_trainer):
    x, y = imbalanced_digits(image=True)
    cb = OutputBiasInit()
    trainer = _fit(make_trainer, Classifier(conv_only()), loader(x, y), [cb])
    _assert_skipped(cb, trainer, "no nn.Linear/LazyLinear/1x1 conv output layer")


def test_skip_batch_it_cannot_split(make_trainer):
    x, y = imbalanced_digits()
    cb = OutputBiasInit()
    train = DataLoader(DictDataset(x, y), batch_size=64, shuffle=True)
    trainer = _fit(make_trainer, DictBatchClassifier(digits_mlp()), train, [cb])
    _assert_skipped(cb, trainer, "could not find the targets in a dict batch")


def test_skip_float_targets_for_multiclass(make_trainer):
    x, y = regression_data()
    cb = OutputBiasInit(task="multiclass")
    model = Regressor(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)))
    trainer = _fit(make_trainer, model, loader(x, y), [cb])
    _assert_skipped(cb, trainer, "Expected integer class indices")


def test_skip_output_layer_without_bias(make_trainer):
    x, y = imbalanced_digits()
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10, bias=False))
    cb = OutputBiasInit()
    trainer = _fit(make_trainer, Classifier(net), loader(x, y), [cb])
    _assert_skipped(cb, trainer, "`net.2` (Linear) has no bias")


def test_skip_unknown_layer_name_and_prior_width(make_trainer):
    x, y = imbalanced_digits()
    cb = OutputBiasInit(layer="net.nope")
    trainer = _fit(make_trainer, Classifier(digits_mlp()), loader(x, y), [cb])
    _assert_skipped(cb, trainer, "no module 'net.nope'")
    cb2 = OutputBiasInit(prior=[0.5, 0.5])
    trainer = _fit(make_trainer, Classifier(digits_mlp()), loader(x, y), [cb2])
    _assert_skipped(cb2, trainer, "prior has 2 values but `net.5` has 10 outputs")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"task": "softmax"}, ValueError),
        ({"prior": "0.5"}, TypeError),
        ({"prior": []}, TypeError),
        ({"prior": [1.5, -0.5]}, ValueError),
        ({"prior": [float("nan")]}, ValueError),
        ({"max_batches": 0}, ValueError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="Expected"):
        OutputBiasInit(**kwargs)


# --- resume and state -----------------------------------------------------------------------------


def test_resume_does_not_reapply_and_state_round_trips(make_trainer, tmp_path: Path):
    x, y = imbalanced_digits()
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = OutputBiasInit()
    _fit(make_trainer, Classifier(digits_mlp(), lr=0.05), loader(x, y), [first, ckpt], max_steps=5,
         enable_checkpointing=True)
    saved = torch.load(ckpt.last_model_path, weights_only=False)
    trained_bias = saved["state_dict"]["net.5.bias"]
    assert not torch.allclose(torch.softmax(trained_bias, 0), _prior(y, 10), atol=1e-3)  # it trained

    second, snap = OutputBiasInit(), Snapshot()
    trainer = make_trainer(max_steps=7, max_epochs=5, callbacks=[second, snap])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(digits_mlp()), train_dataloaders=loader(x, y), ckpt_path=ckpt.last_model_path)
    assert torch.equal(snap.at_train_start["net.5.bias"], trained_bias)  # not re-applied
    assert second.applied_bias == first.applied_bias  # state restored
    assert [f.to_dict() for f in second.findings] == [f.to_dict() for f in first.findings]


def test_state_key_and_pickle():
    a, b = OutputBiasInit(), OutputBiasInit(task="binary", layer="head")
    assert a.state_key != b.state_key
    a.applied_bias = [0.1, 0.2]
    c = OutputBiasInit()
    c.load_state_dict(pickle.loads(pickle.dumps(a)).state_dict())
    assert c.applied_bias == [0.1, 0.2]
    c.load_state_dict({})  # tolerant defaults
    assert c.applied_bias is None and c.findings == []


# --- DDP: counts reduced across ranks, same bias everywhere; Lightning shards the balanced sampler --


@pytest.mark.ddp
def test_ddp_counts_reduced_and_balanced_sampler_sharded(tmp_path: Path):
    import json
    import os
    import subprocess
    import sys

    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from lightning_tips.fixes.sampler import balanced_sampler
    from tests.helpers.fixes_models import synthetic_9_to_1

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = str(root)
    script = root / "tests" / "scripts" / "ddp_output_bias.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], timeout=120, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # OutputBiasInit: the bias is the log prior of the targets scanned on BOTH ranks, identical on each
    scanned = torch.tensor(ranks[0]["scanned_targets"] + ranks[1]["scanned_targets"])
    assert len(scanned) == 2 * 4 * 40
    expected = torch.bincount(scanned, minlength=2).float().div(len(scanned)).log()
    assert ranks[0]["bias"] == ranks[1]["bias"]
    assert torch.allclose(torch.tensor(ranks[0]["bias"]), expected, atol=1e-5)
    assert "x 2 ranks" in ranks[0]["findings"][0]["message"]
    # WeightInit: the same weights on every rank although each rank was seeded differently
    assert ranks[0]["weights"] == ranks[1]["weights"] and len(ranks[0]["weights"]) == 5
    # ForgetGateBias (after WeightInit zeroed the biases): both directions on both ranks
    assert all(v == pytest.approx(1.0) for r in ranks for d in r["forget"] for v in d)

    # balanced_sampler under Lightning's DistributedSamplerWrapper: one shared draw, disjoint shards
    wrapper = ranks[0]["wrapper"]
    assert wrapper["type"] == "DistributedSamplerWrapper"
    _, y = synthetic_9_to_1(n=800, features=8)
    for r, result in enumerate(ranks):
        ref = DistributedSamplerWrapper(balanced_sampler(y, seed=3), num_replicas=2, rank=r,
                                        shuffle=wrapper["shuffle"], seed=wrapper["seed"])
        ref.set_epoch(0)
        assert result["seen"] == list(ref)[: 3 * 40]
    seen = ranks[0]["seen"] + ranks[1]["seen"]
    assert float(y[seen].float().mean()) == pytest.approx(0.5, abs=0.1)


class _NoisyLabels(torch.utils.data.Dataset):
    """Map-style, owning a generator (noise per item): the scan must not advance it."""

    def __init__(self) -> None:
        self.y = torch.arange(40) % 4
        self.g = torch.Generator().manual_seed(3)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(8, generator=self.g), self.y[i]


class _LabelStream(torch.utils.data.IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in range(40):
            yield torch.randn(8), torch.tensor(i % 4)


def test_scan_reads_a_copy_and_never_a_stream() -> None:
    """The prior scan neither advances a dataset's own generator nor consumes a stream (#10 item 3)."""
    data = _NoisyLabels()
    before = data.g.get_state()
    got = OutputBiasInit()._scan(DataLoader(data, batch_size=8, shuffle=True), 4)
    assert not isinstance(got, str) and got[3] == 40  # every label counted ...
    assert torch.equal(data.g.get_state(), before)  # ... through a copy of the dataset
    why = OutputBiasInit()._scan(DataLoader(_LabelStream(), batch_size=8), 4)
    assert isinstance(why, str) and "prior=[...]" in why


def test_a_skipped_init_is_marked_skipped_and_explains_nothing(make_trainer) -> None:
    """A skip is no applied fix: it must not count as the root cause of a later init-loss finding."""
    fix = OutputBiasInit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fix._skip(make_trainer(), "a test reason")
    [f] = fix.findings
    assert f.skipped and f.severity.value == "info"
    from lightning_tips.findings import Finding, root_cause

    assert root_cause(Finding("init-loss", "warning", "initial loss 9.2"), [f]) is None

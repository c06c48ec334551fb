"""balanced_sampler (T6): balanced batches in expectation, reproducible, shardable by Lightning under DDP."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips.fixes.sampler import BalancedSampler, balanced_sampler, class_weights
from tests.helpers.data import breast_cancer_tensors
from tests.helpers.fixes_models import synthetic_9_to_1
from tests.helpers.models import Classifier


def _share(labels: torch.Tensor, idx: list[int], c: int = 1) -> float:
    return float((labels[idx] == c).float().mean())


def test_minority_share_is_half_on_9_to_1():
    _, y = synthetic_9_to_1()
    assert _share(y, list(range(len(y)))) == pytest.approx(0.1)
    idx = list(balanced_sampler(y, num_samples=20_000, seed=0))
    assert _share(y, idx) == pytest.approx(0.5, abs=0.015)


def test_breast_cancer_and_multiclass_frequencies_uniform():
    _, y = breast_cancer_tensors()
    idx = list(balanced_sampler(y, num_samples=20_000))
    assert _share(y, idx) == pytest.approx(0.5, abs=0.015)
    y3 = torch.tensor([0] * 700 + [1] * 250 + [2] * 50)
    freq = torch.bincount(y3[list(balanced_sampler(y3, num_samples=30_000))], minlength=3).float() / 30_000
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.015)


def test_each_batch_balanced_in_expectation():
    x, y = synthetic_9_to_1()
    dl = DataLoader(TensorDataset(x, y), batch_size=64, sampler=balanced_sampler(y, seed=1))
    shares = [float(b[1].float().mean()) for b in dl]
    assert len(shares) == 16 and np.mean(shares) == pytest.approx(0.5, abs=0.04)
    assert min(shares) > 0.25  # no batch without the minority


def test_same_seed_same_order_and_epochs_differ():
    _, y = synthetic_9_to_1()
    a, b, c = balanced_sampler(y, seed=7), balanced_sampler(y, seed=7), balanced_sampler(y, seed=8)
    first = list(a)
    assert first == list(b) and first != list(c)
    assert list(a) != first  # the next iteration continues the stream
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) != first
    a.set_epoch(0)
    assert list(a) == list(balanced_sampler(y, seed=7))
    state = torch.random.get_rng_state()
    list(balanced_sampler(y, seed=7))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is not used


def test_without_replacement_and_defaults():
    _, y = synthetic_9_to_1(n=100)
    s = balanced_sampler(y.tolist(), replacement=False)
    idx = list(s)
    assert len(s) == 100 and sorted(idx) == list(range(100))  # a permutation, minority first on average
    assert np.mean([y[i].item() for i in idx[:10]]) > 0.3
    assert isinstance(s, BalancedSampler) and len(balanced_sampler(np.array([0, 1, 1]))) == 3


@pytest.mark.parametrize(
    ("labels", "kwargs", "error"),
    [
        (torch.tensor([0.0, 1.0]), {}, TypeError),
        (torch.zeros(2, 2, dtype=torch.long), {}, ValueError),
        ([], {}, ValueError),
        ([0, -1], {}, ValueError),
        ([0, 1], {"num_samples": 0}, ValueError),
        ([0, 1], {"num_samples": 3, "replacement": False}, ValueError),
        ([0, 1], {"seed": 1.5}, TypeError),
    ],
)
def test_bad_input(labels, kwargs, error):
    with pytest.raises(error, match="Expected"):
        balanced_sampler(labels, **kwargs)


def test_class_weights_give_each_class_equal_mass():
    _, y = synthetic_9_to_1()
    w = class_weights(y)
    assert float(w[y == 0].sum()) == pytest.approx(1.0) and float(w[y == 1].sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("shuffle", [False, True])
def test_distributed_sampler_wrapper_shards_one_shared_draw(shuffle):
    """What Lightning does under DDP with use_distributed_sampler=True: every rank builds the wrapper
    over its own sampler copy; same seed and epoch -> one shared draw, split into disjoint positions."""
    _, y = synthetic_9_to_1()
    shards = []
    for rank in (0, 1):
        wrapper = DistributedSamplerWrapper(balanced_sampler(y, seed=5), num_replicas=2, rank=rank, shuffle=shuffle)
        wrapper.set_epoch(2)  # forwarded to BalancedSampler.set_epoch
        shards.append(list(wrapper))
    reference = balanced_sampler(y, seed=5)
    reference.set_epoch(2)
    full = list(reference)
    assert len(shards[0]) == len(shards[1]) == len(full) // 2
    assert sorted(shards[0] + shards[1]) == sorted(full)  # disjoint positions of one draw
    if not shuffle:
        assert shards[0] == full[0::2] and shards[1] == full[1::2]
    assert shards[0] != shards[1]
    for shard in shards:
        assert _share(y, shard) == pytest.approx(0.5, abs=0.06)  # each rank's shard balanced


def test_trainer_fit_sees_balanced_batches(make_trainer):
    x, y = synthetic_9_to_1(features=64)
    seen: list[torch.Tensor] = []

    class Recording(Classifier):
        def training_step(self, batch, batch_idx):
            seen.append(batch[1])
            return super().training_step(batch, batch_idx)

    dl = DataLoader(TensorDataset(x, y), batch_size=50, sampler=balanced_sampler(y, seed=0))
    trainer = make_trainer(max_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Recording(torch.nn.Linear(64, 2)), train_dataloaders=dl)
    labels = torch.cat(seen)
    assert len(labels) == 2000 and float(labels.float().mean()) == pytest.approx(0.5, abs=0.04)
    first, second = torch.cat(seen[:20]), torch.cat(seen[20:])
    assert not torch.equal(first, second)  # Lightning's set_epoch gave epoch 1 a new draw
    assert dl.sampler.epoch == 1

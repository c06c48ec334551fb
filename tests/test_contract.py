"""The contract every public callback keeps, checked for each one found in ``lightning_tips.__all__``.

- LightningCLI can build it from ``{"class_path": ..., "init_args": ...}`` (jsonargparse, type hints only);
- it pickles, and ``state_dict`` -> ``load_state_dict`` round-trips;
- its state survives a REAL checkpoint: a new Trainer with a new instance resumes with exactly the
  saved state, does not re-apply fixes, does not repeat findings, and its counters go on;
- checks and views (everything but the fixes) are pure observers: same seed, ``deterministic=True``,
  a shuffled loader with its own generator, BatchNorm and Dropout — every parameter and buffer ends
  bit-for-bit equal with or without the callback;
- used alone, it prints the end-of-fit summary (the base class owns the lifecycle);
- every ``*_every_n_steps`` knob takes ``0`` (no periodic work) and rejects negatives.

New callbacks are covered automatically: the list is discovered from ``lightning_tips.__all__``.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import pickle
import re
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_tips as lt
from lightning_tips.checks._preflight import PreflightCheck
from lightning_tips.findings import Finding, FindingsLog
from tests.helpers.data import digits_tensors
from tests.helpers.fitting import fit, trainer_factory


def _public_callbacks() -> list[type[Callback]]:
    found = []
    for name in lt.__all__:
        obj = getattr(lt, name)
        if isinstance(obj, type) and issubclass(obj, Callback):
            found.append(obj)
    return found


CALLBACKS = _public_callbacks()
# The fixes change the model or the loop on purpose; everything else must be a pure observer.
# (EarlyStopping restores the best weights at the end; LRDecayGuard is an observer unless floor= is set.)
FIXES = {"OutputBiasInit", "ForgetGateBias", "WeightInit", "GradientClipping", "EarlyStopping"}
OBSERVERS = [c for c in CALLBACKS if c.__name__ not in FIXES]

# constructor args, only where a class needs them for the fit to exercise it
KWARGS: dict[str, dict[str, Any]] = {
    "SnapshotEnsemble": {"k": 2},  # an ensemble forms within 2 epochs
    "EarlyStopping": {"patience": 100},  # never stops in these short fits: wait_count must carry over
}
# findings the contract model produces on every fit (planted) ...
PLANTED_CODES = {"optimizer-defaults", "dead-activation", "vanishing-gradient"}
# ... of which these have constant figures: after a resume they must not be reported at all
PERSISTENT_CODES = {"optimizer-defaults", "dead-activation"}


def kwargs_for(cls: type[Callback]) -> dict[str, Any]:
    """The table's args, plus ``every_n_steps=2`` (and ``view_every_n_steps=2``) so sampled steps really happen."""
    kw = dict(KWARGS.get(cls.__name__, {}))
    params = inspect.signature(cls.__init__).parameters
    for name in ("every_n_steps", "view_every_n_steps"):
        if name in params:
            kw.setdefault(name, 2)
    return kw


# --- the contract model and data ----------------------------------------------------------------
class ContractNet(pl.LightningModule):
    """A digits classifier with BatchNorm, Dropout, an LSTM branch (rows as a sequence: the forget-gate
    fix has a gate to set) and a planted dead-ReLU side branch; Adam at lr 0.02 (outside R3.2's range).
    So checks have something to say (dead-activation, vanishing-gradient, optimizer-defaults) while
    training still goes on. ``nan_at_step`` makes the loss NaN at that global step."""

    def __init__(self, lr: float = 0.02, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.lr = lr
        self.nan_at_step = nan_at_step
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.25), nn.Flatten()
        )
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        dead_in = nn.Linear(64, 16)
        with torch.no_grad():
            dead_in.bias.fill_(-100.0)  # never fires: dead units, zero gradient upstream
        self.dead = nn.Sequential(dead_in, nn.ReLU())
        self.head = nn.Linear(8 * 64 + 8 + 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x.flatten(1, 2))  # (N, 1, 8, 8) -> 8 rows of 8
        return self.head(torch.cat([self.conv(x), h[-1], self.dead(x.flatten(1))], dim=1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.nan_at_step is not None and self._trainer is not None and self.trainer.global_step == self.nan_at_step:
            loss = loss * float("nan")
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class NoisyDigits(torch.utils.data.Dataset):
    """A map-style dataset that owns a random generator (noise augmentation drawn per item)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.g = torch.Generator().manual_seed(5)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.1 * torch.randn(self.x[i].shape, generator=self.g), self.y[i]


class DigitStream(torch.utils.data.IterableDataset):
    """A streaming dataset drawing samples from its own generator: every sample read is gone."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.g = torch.Generator().manual_seed(7)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(len(self.x)):
            i = int(torch.randint(len(self.x), (1,), generator=self.g))
            yield self.x[i], self.y[i]


def _loaders(dataset: str = "tensor") -> tuple[DataLoader, DataLoader]:
    x, y = digits_tensors()
    val = DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=64)
    if dataset == "stream":
        return DataLoader(DigitStream(x[:1500], y[:1500]), batch_size=32), val
    data = NoisyDigits(x[:1500], y[:1500]) if dataset == "own-generator" else TensorDataset(x[:1500], y[:1500])
    g = torch.Generator().manual_seed(1234)  # the loader's own generator: observers must not advance it
    return DataLoader(data, batch_size=32, shuffle=True, generator=g), val


def _fit(
    callbacks: list[Callback],
    root: Path,
    *,
    max_epochs: int = 2,
    ckpt_path: Path | None = None,
    checkpoint_dir: Path | None = None,
    model_kw: Mapping[str, Any] | None = None,
    dataset: str = "tensor",
) -> tuple[pl.Trainer, ContractNet, list[str]]:
    """Seed, build, fit 6 train / 2 val batches per epoch; the TipWarnings emitted during the fit."""
    train, val = _loaders(dataset)  # no global random state: the data sets and the loader have their own
    cbs = list(callbacks)
    if checkpoint_dir is not None:
        cbs.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0))
    run = fit(trainer_factory(root), lambda: ContractNet(**(model_kw or {})), train, val, callbacks=cbs,
              ckpt_path=ckpt_path, max_epochs=max_epochs, limit_train_batches=6, limit_val_batches=2,
              deterministic=True, enable_checkpointing=checkpoint_dir is not None)
    assert isinstance(run.model, ContractNet)
    return run.trainer, run.model, run.warnings


@pytest.fixture(autouse=True, scope="module")
def _restore_determinism() -> Iterator[None]:
    """``deterministic=True`` flips process-wide torch flags; give them back to the other test modules."""
    before = torch.are_deterministic_algorithms_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(before)
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# --- comparing states -----------------------------------------------------------------------------
def assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Recursive equality: mappings by key, sequences by position, tensors bit-for-bit (NaN == NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: {type(a)} vs {type(b)}"
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.is_floating_point():
            assert torch.equal(a.isnan(), b.isnan()), f"{path}: NaNs differ"
            a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
        assert torch.equal(a, b), f"{path}: tensors differ"
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: nan vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _ids(classes: list[type[Callback]]) -> list[str]:
    return [c.__name__ for c in classes]


# --- discovery --------------------------------------------------------------------------------------
def test_every_public_callback_is_discovered() -> None:
    names = _ids(CALLBACKS)
    assert len(names) >= 15, names
    for expected in ("Recipe", "Preflight", "NonFiniteGuard", "GradientStats", "ActivationStats", "LearningCurves",
                     "FirstLayerFilters", "FixedBatchPredictions", "EarlyStopping", "SnapshotEnsemble", "WeightInit"):
        assert expected in names
    assert set(names) >= FIXES, "a fix was renamed: update FIXES"
    assert "BalancedSampler" not in names  # a sampler, not a callback


# --- LightningCLI, pickle, in-memory state --------------------------------------------------------------
@pytest.mark.parametrize("cls", CALLBACKS, ids=_ids(CALLBACKS))
def test_lightning_cli_builds_it_from_class_path_and_init_args(cls: type[Callback]) -> None:
    kw = kwargs_for(cls)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--cb", type=Callback)
    cfg = parser.parse_object({"cb": {"class_path": f"lightning_tips.{cls.__name__}", "init_args": kw}})
    cb = parser.instantiate_classes(cfg).cb
    assert type(cb) is cls
    direct = cls(**kw)
    assert cb.state_key == direct.state_key
    assert_same(cb.state_dict(), direct.state_dict())
    for name, value in kw.items():
        if hasattr(cb, name):
            assert getattr(cb, name) == value, name
    # defaults only, no init_args at all
    bare = parser.instantiate_classes(parser.parse_object({"cb": {"class_path": f"lightning_tips.{cls.__name__}"}})).cb
    assert type(bare) is cls


@pytest.mark.parametrize("cls", CALLBACKS, ids=_ids(CALLBACKS))
def test_pickles_and_state_dict_round_trips(cls: type[Callback]) -> None:
    kw = kwargs_for(cls)
    cb = cls(**kw)
    clone = pickle.loads(pickle.dumps(cb))
    assert type(clone) is cls and clone.state_key == cb.state_key
    assert_same(clone.state_dict(), cb.state_dict())
    fresh = cls(**kw)
    fresh.load_state_dict(cb.state_dict())
    assert_same(fresh.state_dict(), cb.state_dict())
    # an older or foreign checkpoint entry (missing keys) loads with the defaults; for EarlyStopping, the
    # entry of Lightning's own EarlyStopping (same state_key), the one foreign state it can meet
    foreign: dict[str, Any] = {}
    if cls is lt.EarlyStopping:
        from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

        plain = LightningEarlyStopping(monitor="val_loss", patience=kw["patience"])
        assert plain.state_key == cb.state_key
        foreign = plain.state_dict()
    tolerant = cls(**kw)
    tolerant.load_state_dict(foreign)
    assert_same(tolerant.state_dict(), cls(**kw).state_dict())


# --- resume through a real checkpoint ---------------------------------------------------------------
class Probe(Callback):
    """Captures ``target``'s state at ``on_fit_start`` (after a single-device restore, before ``target``'s
    own fit-start hooks when placed first) and the model's weights at ``on_train_start`` (after every fix
    ran, when placed last)."""

    def __init__(self, target: Callback) -> None:
        self.target = target
        self.state: dict[str, Any] | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = copy.deepcopy(self.target.state_dict())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class Snapshot(Callback):
    """Takes ``target.state_dict()`` at the end of the first epoch, and a deep copy of it: a state_dict must be
    a snapshot, so training on (or a checkpoint written in a background thread) cannot change it later."""

    def __init__(self, target: Callback) -> None:
        self.target = target
        self.raw: dict[str, Any] | None = None
        self.copy: dict[str, Any] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.raw is None:
            self.raw = self.target.state_dict()
            self.copy = copy.deepcopy(self.raw)


def _prefix(long: list[Any], short: list[Any], path: str) -> None:
    assert len(long) >= len(short), f"{path}: {len(long)} < {len(short)}"
    assert_same(long[: len(short)], short, path)


def _continues_learning_curves(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert len(saved["history"]["epoch"]) >= 2
    assert len(final["history"]["epoch"]) > len(saved["history"]["epoch"])
    for k, v in saved["history"].items():
        _prefix(final["history"][k], v, f"history[{k}]")


def _continues_gradient_stats(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert saved["count"] >= 3 and final["count"] > saved["count"]
    _prefix(final["steps"], saved["steps"], "steps")
    assert final["baseline"] == saved["baseline"]  # the earliest norms stay the reference


def _continues_activation_stats(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert saved["history"] and final["sampled_step"] > saved["sampled_step"] >= 0
    for key, h in saved["history"].items():
        assert len(final["history"][key]["steps"]) > len(h["steps"]) > 0, key
        _prefix(final["history"][key]["steps"], h["steps"], f"history[{key}].steps")


def _continues_nonfinite_guard(saved: dict[str, Any], final: dict[str, Any]) -> None:
    _prefix(final["reported_steps"], saved["reported_steps"], "reported_steps")
    _prefix(final["skipped_steps"], saved["skipped_steps"], "skipped_steps")
    assert all(final["counts"][k] >= n for k, n in saved["counts"].items())


def _continues_early_stopping(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert len(saved["val_history"]) == 2 and len(final["val_history"]) == 3
    _prefix(final["val_history"], saved["val_history"], "val_history")
    improved = not torch.equal(torch.as_tensor(final["best_score"]), torch.as_tensor(saved["best_score"]))
    assert final["wait_count"] == (0 if improved else saved["wait_count"] + 1)


def _continues_gradient_clipping(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert saved["steps"] == 12 and final["steps"] == 18


def _continues_snapshot_ensemble(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert [e["epoch"] for e in saved["snapshots"]] == [0, 1]
    assert [e["epoch"] for e in final["snapshots"]] == [1, 2]
    assert_same(final["snapshots"][0]["weights"], saved["snapshots"][1]["weights"])


def _continues_lr_decay(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert saved["initial"] and final["initial"] == saved["initial"]


def _continues_fixed_batch(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert saved["batch"] is not None
    assert_same(final["batch"], saved["batch"], "batch")  # the SAME fixed batch across the resume
    assert final["last_step"] > saved["last_step"]


def _continues_preflight(saved: dict[str, Any], final: dict[str, Any]) -> None:
    assert saved["done"] and final["done"]


def _continues_fix(key: str) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def check(saved: dict[str, Any], final: dict[str, Any]) -> None:
        assert saved[key], f"the fix did not apply before the checkpoint ({key}={saved[key]!r})"
        assert_same(final[key], saved[key], key)

    return check


CONTINUES: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "LearningCurves": _continues_learning_curves,
    "GradientStats": _continues_gradient_stats,
    "ActivationStats": _continues_activation_stats,
    "NonFiniteGuard": _continues_nonfinite_guard,
    "EarlyStopping": _continues_early_stopping,
    "GradientClipping": _continues_gradient_clipping,
    "SnapshotEnsemble": _continues_snapshot_ensemble,
    "LRDecayGuard": _continues_lr_decay,
    "FixedBatchPredictions": _continues_fixed_batch,
    "Preflight": _continues_preflight,
    "WeightInit": _continues_fix("applied"),
    "ForgetGateBias": _continues_fix("gates_set"),
    "OutputBiasInit": _continues_fix("applied_bias"),
}


def _check_continuation(cb: Callback, saved: dict[str, Any], final: dict[str, Any]) -> list[str]:
    """Run the per-class continuation checks on ``cb`` and, for composites, on every child; the names checked."""
    checked = []
    if isinstance(cb, PreflightCheck):
        assert saved["done"] and final["done"], "a pre-flight check ran again (or never) across the resume"
    if (check := CONTINUES.get(type(cb).__name__)) is not None:
        check(saved, final)
        checked.append(type(cb).__name__)
    if isinstance(cb, lt.TipComposite):
        for i, child in enumerate(cb.children):
            key = f"{i}:{child.state_key}"
            checked += _check_continuation(child, saved["children"][key], final["children"][key])
    return checked


def _resume_cases() -> list[Any]:
    cases = []
    for cls in CALLBACKS:
        kw, model_kw = kwargs_for(cls), {}
        if cls is lt.NonFiniteGuard:  # a NaN at step 3, skipped: the guard's history has something to carry
            kw, model_kw = {"action": "skip", "every_n_steps": 1}, {"nan_at_step": 3}
        cases.append(pytest.param(cls, kw, model_kw, id=cls.__name__))
    cases.append(pytest.param(lt.LRDecayGuard, {"every_n_steps": 2, "floor": 0.01}, {}, id="LRDecayGuard-floor"))
    return cases


def _code(warning_text: str) -> str:
    return warning_text[1 : warning_text.index("]")]


@pytest.mark.parametrize(("cls", "kw", "model_kw"), _resume_cases())
def test_state_continues_through_a_real_checkpoint(
    cls: type[Callback], kw: dict[str, Any], model_kw: dict[str, Any], tmp_path: Path
) -> None:
    first = cls(**kw)
    snapshot = Snapshot(first)
    _, _, tips1 = _fit([first, snapshot], tmp_path, checkpoint_dir=tmp_path / "ckpt", model_kw=model_kw)
    assert snapshot.raw is not None
    assert_same(snapshot.raw, snapshot.copy, "state_dict() taken after epoch 0, at the end of the fit")
    ckpt_path = tmp_path / "ckpt" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu")
    saved = ckpt["callbacks"][first.state_key]

    # a trained callback pickles (ddp_spawn does it) and its trained state round-trips in memory
    assert_same(pickle.loads(pickle.dumps(first)).state_dict(), first.state_dict())
    fresh = cls(**kw)
    fresh.load_state_dict(copy.deepcopy(saved))
    assert_same(fresh.state_dict(), saved)

    second = cls(**kw)
    before, after = Probe(second), Probe(second)
    trainer, _, tips2 = _fit(
        [before, second, after], tmp_path, max_epochs=3, ckpt_path=ckpt_path, checkpoint_dir=tmp_path / "resumed",
        model_kw=model_kw,
    )
    assert trainer.current_epoch == 3 and trainer.global_step == 18

    assert isinstance(second, lt.TipCallback)  # every public callback is one
    # the new instance holds exactly the saved state after the load ...
    assert before.state is not None
    assert_same(before.state, saved)
    # ... the fixes did not act again on the trained weights ...
    assert after.weights is not None
    assert_same(after.weights, ckpt["state_dict"], "weights at on_train_start")
    # ... the findings continue from the checkpoint's ...
    final = second.state_dict()
    saved_findings = [Finding.from_dict(d) for d in saved.get("findings", [])]
    _prefix([f.to_dict() for f in second.findings], [f.to_dict() for f in saved_findings], "findings")
    # ... and nothing reported before the checkpoint is reported again: every finding after the resume is
    # new against the checkpoint's (same code and place only with materially changed figures) ...
    memory = FindingsLog()
    for f in saved_findings:
        memory.admit(f)
    for f in second.findings[len(saved_findings) :]:
        assert memory.admit(f), f"repeated after resume: {f.format()}"
    new_codes = {_code(t) for t in tips2}
    saved_codes = {f.code for f in saved_findings}
    assert not (new_codes & saved_codes & PERSISTENT_CODES), tips2
    assert len(tips2) == len(second.findings) - len(saved_findings)
    # ... and the counters go on
    _check_continuation(second, saved, final)
    if cls is lt.Recipe or cls is lt.LRDecayGuard:
        assert "optimizer-defaults" in saved_codes  # the planted persistent finding was there to repeat
    if cls is lt.NonFiniteGuard:  # the NaN at step 3 was seen and skipped before the checkpoint, and is remembered
        for state in (saved, final):
            assert state["reported_steps"] == [3] and state["skipped_steps"] == [3]
            assert state["counts"]["nonfinite-loss"] == 1
        assert [_code(t) for t in tips1] == ["nonfinite-loss"] and tips2 == []


def test_resume_cases_check_the_persistent_findings(tmp_path: Path) -> None:
    """The model really plants the persistent findings the resume test relies on."""
    recipe = lt.Recipe(every_n_steps=2, view_every_n_steps=2)
    _, _, tips = _fit([recipe], tmp_path)
    # the vanishing gradients come from the fully dead layer (findings.ROOT_CAUSES): kept as evidence, not warned
    explained = {f.code for f in recipe.findings if f.cause == "dead-activation"}
    assert {_code(t) for t in tips} | explained >= PLANTED_CODES, tips
    assert "vanishing-gradient" in explained


# --- pure observers ---------------------------------------------------------------------------------------
def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}  # parameters AND buffers


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """One reference fit without any lightning_tips callback."""
    _, model, _ = _fit([], tmp_path_factory.mktemp("plain"))
    return _weights(model)


def _observer_cases() -> list[Any]:
    cases = [pytest.param(lambda c=c: c(**kwargs_for(c)), id=c.__name__) for c in OBSERVERS]
    cases.append(pytest.param(lambda: lt.Recipe(), id="Recipe-defaults"))
    return cases


@pytest.mark.parametrize("make", _observer_cases())
def test_checks_and_views_are_pure_observers(
    make: Callable[[], Callback], plain_weights: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    cb = make()
    trainer, model, _ = _fit([cb], tmp_path)
    assert trainer.global_step == 12
    got = _weights(model)
    assert set(got) == set(plain_weights)
    assert "conv.1.running_mean" in got and "conv.1.num_batches_tracked" in got
    for name, ref in plain_weights.items():
        assert torch.equal(got[name], ref), f"{type(cb).__name__} changed `{name}`"


@pytest.mark.parametrize("dataset", ["own-generator", "stream"])
def test_recipe_is_a_pure_observer_whatever_the_dataset(dataset: str, tmp_path: Path) -> None:
    """A dataset owning a random generator, and a stream that loses what is read: Recipe() neither
    advances the generator nor consumes samples (#10) — same weights as without it, and the stream's
    reference fit differs from the plain one's (the dataset's randomness matters)."""
    _, plain, _ = _fit([], tmp_path / "plain", dataset=dataset)
    _, with_recipe, _ = _fit([lt.Recipe()], tmp_path / "recipe", dataset=dataset)
    for name, ref in _weights(plain).items():
        assert torch.equal(_weights(with_recipe)[name], ref), f"Recipe changed `{name}` on a {dataset} dataset"
    _, tensor_model, _ = _fit([], tmp_path / "tensor")
    assert not torch.equal(_weights(tensor_model)["head.weight"], _weights(plain)["head.weight"])


def test_the_reference_fit_is_itself_reproducible(plain_weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """Guards the observer test against a vacuous pass: same seed -> same weights; another seed -> others."""
    _, model, _ = _fit([], tmp_path)
    assert all(torch.equal(v, plain_weights[k]) for k, v in _weights(model).items())
    pl.seed_everything(1, verbose=False)
    other = ContractNet()
    assert not torch.equal(other.head.weight, plain_weights["head.weight"])


# --- the recipe with every fix on -----------------------------------------------------------------------------
ALL_FIXES: dict[str, Any] = {
    "every_n_steps": 2, "view_every_n_steps": 2, "weight_init": "auto", "forget_gate_bias": 1.0,
    "output_bias_init": True, "gradient_clip": 1.0, "lr_floor": 0.01, "early_stopping": True, "snapshot_ensemble": 2,
}


def test_recipe_with_every_fix_on_fits_and_resumes(tmp_path: Path) -> None:
    first = lt.Recipe(**ALL_FIXES)
    names = [type(c).__name__ for c in first.children]
    for fix in ("WeightInit", "ForgetGateBias", "OutputBiasInit", "GradientClipping", "EarlyStopping", "SnapshotEnsemble"):
        assert fix in names
    at_start = Probe(first)
    _, model, tips1 = _fit([first, at_start], tmp_path, checkpoint_dir=tmp_path / "ckpt")
    codes1 = {_code(t) for t in tips1}
    assert {"weight-init", "forget-gate-bias", "output-bias", "gradient-clipping", "snapshot-ensemble"} <= codes1
    # the forget gate was set after the weight init (the order of the fixes; WeightInit zeroes biases):
    # bias_ih + bias_hh == 1 on the forget slice when training starts
    assert at_start.weights is not None
    hidden = model.lstm.hidden_size
    forget = (at_start.weights["lstm.bias_ih_l0"] + at_start.weights["lstm.bias_hh_l0"])[hidden : 2 * hidden]
    assert torch.allclose(forget, torch.ones(hidden))
    # ... and the output bias was set to the log prior after the weight init, not zeroed by it
    assert at_start.weights["head.bias"].abs().max() > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())

    ckpt_path = tmp_path / "ckpt" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu")
    saved = ckpt["callbacks"][first.state_key]
    second = lt.Recipe(**ALL_FIXES)
    before, after = Probe(second), Probe(second)
    trainer, _, tips2 = _fit([before, second, after], tmp_path, max_epochs=3, ckpt_path=ckpt_path)
    assert trainer.global_step == 18
    assert before.state is not None and after.weights is not None
    assert_same(before.state, saved)
    assert_same(after.weights, ckpt["state_dict"], "weights at on_train_start")  # no fix re-applied
    assert not {_code(t) for t in tips2} & {"weight-init", "forget-gate-bias", "output-bias"}
    checked = _check_continuation(second, saved, second.state_dict())
    assert {"WeightInit", "ForgetGateBias", "OutputBiasInit", "GradientClipping", "EarlyStopping",
            "SnapshotEnsemble", "GradientStats", "ActivationStats", "LearningCurves"} <= set(checked)


# --- argument validation, generated from the signatures -----------------------------------------------
# (class, argument) pairs where a negative number is a legitimate value
NEGATIVE_OK = {
    ("ForgetGateBias", "value"), ("Recipe", "forget_gate_bias"),
    ("EarlyStopping", "stopping_threshold"), ("EarlyStopping", "divergence_threshold"),
}


def _bad_values(cls_name: str, name: str, hint: Any) -> list[Any]:
    """Values the annotation ``hint`` rules out: a wrong type, NaN, a negative number, a bool for an int, a str
    for a bool, ``None`` where the argument is not Optional, a string outside a ``Literal``. Empty for the
    annotations this generator does not know (they are left to the class's own tests)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    optional = type(None) in args and origin in (typing.Union, types.UnionType)
    inner = [a for a in args if a is not type(None)] if optional else [hint]
    if len(inner) != 1:
        return []
    (t,) = inner
    bad: list[Any] = [] if optional else [None]
    if typing.get_origin(t) is typing.Literal:
        return [*bad, "not-a-choice", 5]
    if t is bool:
        return [*bad, "abc", 1]
    if t is int:
        return [*bad, "abc", 1.5, True, -5]
    if t is float:
        return [*bad, "abc", float("nan"), True] + ([] if (cls_name, name) in NEGATIVE_OK else [-5.0])
    if t is str:
        return [*bad, 5, ""]
    if typing.get_origin(t) is list and typing.get_args(t) == (float,):
        return [*bad, "abc", [], [float("nan")]]
    if typing.get_origin(t) is list and typing.get_args(t) == (Callback,):
        return [*bad, "abc", [5]]
    return []


def _argument_cases() -> list[Any]:
    cases = []
    for cls in CALLBACKS:
        hints = typing.get_type_hints(cls.__init__)
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            assert name in hints, f"{cls.__name__}({name}) has no type hint: LightningCLI cannot build it"
            for value in _bad_values(cls.__name__, name, hints[name]):
                cases.append(pytest.param(cls, name, value, id=f"{cls.__name__}-{name}={value!r}"))
    return cases


ARGUMENT_CASES = _argument_cases()


def test_the_generator_covers_every_callback() -> None:
    """Every public callback with arguments gets bad values generated for each of them (no silent gaps)."""
    covered = {(p.values[0].__name__, p.values[1]) for p in ARGUMENT_CASES}
    for cls in CALLBACKS:
        for name in inspect.signature(cls.__init__).parameters:
            if name != "self" and inspect.signature(cls.__init__).parameters[name].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD:
                assert (cls.__name__, name) in covered, f"no bad value generated for {cls.__name__}({name})"
    assert len(ARGUMENT_CASES) > 200


@pytest.mark.parametrize(("cls", "name", "value"), ARGUMENT_CASES)
def test_bad_argument_is_rejected_at_construction_naming_it(cls: type[Callback], name: str, value: Any) -> None:
    kw = {k: v for k, v in kwargs_for(cls).items() if k != name}
    with pytest.raises((ValueError, TypeError)) as info:
        cls(**kw, **{name: value})
    message = str(info.value)
    assert re.search(rf"\b{re.escape(name)}\b", message), f"the error does not name `{name}`: {message}"
    assert repr(value) in message or str(value) in message, f"the error does not show the value: {message}"
    assert "Expected" in message, message


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"preflight_budget_s": -1}, "preflight_budget_s"), ({"gradient_clip": 0.0}, "gradient_clip"),
     ({"snapshot_ensemble": "3"}, "snapshot_ensemble"), ({"snapshot_ensemble": 1}, "snapshot_ensemble"),
     ({"nonfinite_every_n_steps": -1}, "nonfinite_every_n_steps"), ({"lr_floor": 2.0}, "lr_floor"),
     ({"nonfinite_action": "skip", "nonfinite_every_n_steps": 5}, "nonfinite_every_n_steps"),
     ({"forget_gate_bias": float("nan")}, "forget_gate_bias"), ({"monitor": None}, "monitor")],
)
def test_recipe_errors_name_the_recipe_argument(kwargs: dict[str, Any], named: str) -> None:
    """Not the inner callback's parameter (``budget_s``, ``max_norm``, ``k``, ``every_n_steps``, ``floor``)."""
    with pytest.raises((ValueError, TypeError)) as info:
        lt.Recipe(**kwargs)
    message = str(info.value)
    assert named in message, message
    for inner in ("budget_s ", "max_norm", " k ", "floor ", "value "):
        assert inner not in message.replace(named, ""), message


# --- fixes never wipe weights that matter (#10 item 2) ----------------------------------------------------------
class FrozenContractNet(ContractNet):
    """The contract model with a frozen "pretrained backbone": the conv branch and the LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv.requires_grad_(False)
        self.lstm.requires_grad_(False)


def _fit_once(model: pl.LightningModule, callbacks: list[Callback], root: Path, train_batches: int) -> None:
    """One quiet epoch of ``train_batches`` training batches and one validation batch of the given model."""
    train, val = _loaders()
    fit(trainer_factory(root), model, train, val, callbacks=callbacks, seed=None, warns="ignore",
        limit_train_batches=train_batches, limit_val_batches=1)


def test_every_fix_leaves_frozen_parameters_bit_for_bit(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = FrozenContractNet()
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    assert any(k.startswith("lstm.") for k in frozen) and any(k.startswith("conv.") for k in frozen)
    recipe = lt.Recipe(**ALL_FIXES)
    probe = Probe(recipe)
    _fit_once(model, [recipe, probe], tmp_path, train_batches=2)
    assert probe.weights is not None
    for name, before in frozen.items():
        assert torch.equal(probe.weights[name], before), f"a fix changed the frozen `{name}`"
        assert torch.equal(dict(model.named_parameters())[name], before), f"training changed the frozen `{name}`"
    applied = recipe.child(lt.WeightInit).applied  # type: ignore[union-attr]
    assert applied and not any(k.startswith(("conv", "lstm")) for k in applied)


def test_weight_init_leaves_a_pretrained_looking_model_alone(tmp_path: Path) -> None:
    """A model trained by a first fit and handed to a second one (fine-tuning): `weight_init="auto"` keeps it."""
    _, model, _ = _fit([], tmp_path)
    trained = _weights(model)
    recipe = lt.Recipe(weight_init="auto", every_n_steps=2, view_every_n_steps=2, preflight=False)
    probe = Probe(recipe)
    _fit_once(model, [recipe, probe], tmp_path, train_batches=1)
    assert probe.weights is not None
    for name, before in trained.items():
        assert torch.equal(probe.weights[name], before), f"weight_init changed the trained `{name}`"
    [f] = [f for f in recipe.findings if f.code == "weight-init"]
    assert f.skipped and "not freshly initialised" in f.message


@pytest.mark.parametrize("monitor", ["val_loss_never_logged", "val_loss"])
def test_recipe_early_stopping_never_crashes_on_a_missing_monitor(tmp_path: Path, monitor: str) -> None:
    """A monitor that is never logged, and no validation loop at all: the fit completes, an info says why."""
    recipe = lt.Recipe(early_stopping=True, monitor=monitor, every_n_steps=2, view_every_n_steps=2, preflight=False)
    pl.seed_everything(0, verbose=False)
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=2,
                             limit_train_batches=2, limit_val_batches=0 if monitor == "val_loss" else 1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[recipe])
        trainer.fit(ContractNet(), train, val)
    assert trainer.state.finished and trainer.current_epoch == 2
    assert any(f.skipped and f.module == monitor for f in recipe.findings)


# --- the lifecycle: owned by TipCallback, so every callback prints the summary -----------------------
SUMMARY = re.compile(r"lightning_tips: (\d+) finding\(s\)")


@pytest.mark.parametrize("cls", CALLBACKS, ids=_ids(CALLBACKS))
def test_every_public_callback_used_alone_prints_the_summary(
    cls: type[Callback], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cb = cls(**kwargs_for(cls))
    _fit([cb], tmp_path, max_epochs=1)
    out = capsys.readouterr().out
    summaries = SUMMARY.findall(out)
    assert len(summaries) == 1, f"{cls.__name__}: {len(summaries)} end-of-fit summaries in:\n{out[-2000:]}"
    assert int(summaries[0]) == len(cb.findings)  # type: ignore[attr-defined]


@pytest.mark.parametrize("first", ["ActivationStats", "GradientStats"])
def test_the_first_tip_callback_prints_one_summary_of_all(
    first: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ActivationStats once overrode teardown without super(): listed first, no summary at all
    acts, grads = lt.ActivationStats(every_n_steps=2), lt.GradientStats(every_n_steps=2)
    _, _, warned = _fit([acts, grads] if first == "ActivationStats" else [grads, acts], tmp_path)
    out = capsys.readouterr().out
    assert SUMMARY.findall(out) == [str(len(acts.findings) + len(grads.findings))]
    assert "dead-activation" in {_code(w) for w in warned}  # the planted dead branch
    assert grads.findings, "GradientStats found nothing on the planted dead branch"
    for f in [*acts.findings, *grads.findings]:  # both callbacks' findings are in the one summary
        assert f.code in out


@pytest.mark.parametrize("hook", ["setup", "teardown", "on_exception", "state_dict", "load_state_dict"])
def test_a_subclass_cannot_take_over_the_lifecycle(hook: str) -> None:
    with pytest.raises(TypeError, match=rf"overrides TipCallback\.{hook}, which the base class owns"):
        type("Forgetful", (lt.TipCallback,), {hook: lambda self, *a: None})
    # the named steps are the way in, and composites (which forward the lifecycle) stay possible
    steps = type("Steps", (lt.TipCallback,), {"_begin_fit": lambda self, t, m: None, "_extra_state": lambda self: {"n": 1}})
    assert steps().state_dict()["n"] == 1


# --- one schedule: a period of 0 means no periodic work, for every knob ---------------------------------
PERIOD_KNOBS = [
    pytest.param(cls, name, id=f"{cls.__name__}.{name}")
    for cls in CALLBACKS
    for name in inspect.signature(cls.__init__).parameters
    if name.endswith("every_n_steps")
]


def test_the_period_knobs_are_found() -> None:
    names = {p.id for p in PERIOD_KNOBS}
    assert len(names) >= 12 and {"Recipe.view_every_n_steps", "ActivationStats.histogram_every_n_steps"} <= names


@pytest.mark.parametrize(("cls", "name"), PERIOD_KNOBS)
def test_every_period_knob_takes_zero_and_rejects_negatives(cls: type[Callback], name: str) -> None:
    assert getattr(cls(**{name: 0}), name, 0) == 0  # 0: no periodic work (never an error, never "every step")
    with pytest.raises(ValueError, match=name):
        cls(**{name: -1})

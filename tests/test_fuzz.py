"""Never crash training: ``Recipe`` with every fix on, over generated models and batches (hypothesis).

Each example is one tiny ``Trainer.fit`` (at most 3 optimizer steps over 2 epochs) of a generated
:class:`~tests.helpers.fuzz_models.Spec`: MLP / 3-D-input MLP / CNN / Conv1d / LSTM / GRU / Transformer
encoder / token ids into ``nn.Embedding``; tuple, list, dict, HF-style dict (with a string field),
unrecognised-dict and 3-field batches, a dict of training loaders; tensor, tuple and dict model outputs;
batch size 1, a smaller last batch, sequence length 1, one feature, one class, a single binary logit,
non-square images, uint8 images; multiclass, binary, multilabel, regression and per-step tagging
targets; automatic or manual optimization with one or two optimizers; StepLR per step or epoch,
OneCycle, ReduceLROnPlateau; gradient accumulation, a ``training_step`` that returns ``None``; a lazy
head, a frozen first layer, dropout, BatchNorm; ``32-true``, ``bf16-mixed`` and ``64-true`` precision;
no logger (files), CSV or TensorBoard; with or without a validation loop; NaN in the inputs or
targets now and then. ``Recipe`` runs with every fix on and every period at 1-2 steps.

Findings are allowed, exceptions are not — except a :class:`~lightning_tips.TipError` from the
``nonfinite_action="raise"`` variant, which must carry a registered code.

Early stopping: the pack's ``EarlyStopping`` used alone is Lightning's, whose ``strict=True`` raises a
``RuntimeError`` when the monitored metric is never logged; inside ``Recipe`` that is a skipped ``info``. The fuzz monitors a metric the generated model logs (``val_loss``, ``val_score`` or, with
no validation loop, ``train_loss``); :func:`test_missing_early_stopping_monitor_is_an_info_inside_recipe`
pins what happens otherwise.

``test_never_crash`` runs 200 examples (about 35 s here, so it stays in the default run), derandomized:
the same examples every run. The regression tests at the end pin the crashes the fuzz found.
"""

from __future__ import annotations

import tempfile
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lightning_tips import CODES, Recipe, TipError
from tests.helpers.fitting import fit, trainer_factory
from tests.helpers.fuzz_models import SEQ_ARCHS, Spec, build, valid_spec

EVERY_FIX: dict[str, Any] = {
    "weight_init": "auto",
    "forget_gate_bias": 1.0,
    "output_bias_init": True,
    "gradient_clip": 1.0,
    "lr_floor": 0.01,
    "early_stopping": True,
    "snapshot_ensemble": 2,
    "every_n_steps": 1,
    "view_every_n_steps": 2,
    "preflight_budget_s": 0.5,
}
TRAINER: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 2,
    "max_steps": 3,
    "limit_train_batches": 2,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    arch = draw(st.sampled_from(["mlp", "mlp3d", "cnn", "conv1d", "lstm", "gru", "transformer", "embedding"]))
    tasks = ["multiclass", "binary", "regression", "multilabel"] + (["tagging"] if arch in SEQ_ARCHS else [])
    task = draw(st.sampled_from(tasks))
    outputs = 1 if task == "binary" else draw(st.integers(2 if task == "multilabel" else 1, 3))
    batch_size = draw(st.integers(1, 4))
    norm = draw(st.booleans()) and arch in ("mlp", "cnn")
    spec = Spec(
        arch=arch,
        task=task,
        outputs=outputs,
        binary_squeeze=draw(st.booleans()),
        batch_size=batch_size,
        remainder=draw(st.integers(0, batch_size - 1)),
        features=draw(st.integers(1, 3)),
        seq_len=draw(st.integers(1, 3)),
        height=draw(st.integers(1, 5)),
        width=draw(st.integers(1, 5)),
        hidden=draw(st.integers(2, 4)),
        norm=norm,
        batch_layout=draw(st.sampled_from(["tuple", "list", "dict", "dict_hf", "triple", "opaque_dict"])),
        output_layout=draw(st.sampled_from(["tensor", "tuple", "dict"])),
        validation=draw(st.sampled_from(["none", "val_loss", "other"])),
        optimization=draw(st.sampled_from(["auto", "auto", "manual", "manual2"])),
        optimizer=draw(st.sampled_from(["adam", "sgd", "adamw"])),
        scheduler=draw(st.sampled_from(["none", "step_step", "step_epoch", "onecycle", "plateau"])),
        nan=draw(st.sampled_from(["none"] * 6 + ["input", "target"])),
        shuffle=draw(st.booleans()),
        logger=draw(st.sampled_from(["none", "none", "csv", "tensorboard"])),
        lazy=draw(st.booleans()),
        frozen=draw(st.booleans()),
        dropout=draw(st.booleans()),
        uint8=draw(st.booleans()) and arch == "cnn",
        skip_step=draw(st.booleans()),
        nested_loaders=draw(st.booleans()),
        precision=draw(st.sampled_from(["32-true", "32-true", "bf16-mixed", "64-true"])),
        accumulate=draw(st.sampled_from([1, 1, 2])),
    )
    if spec.optimization != "auto":
        spec = Spec(**{**spec.__dict__, "skip_step": False, "accumulate": 1})
    if not valid_spec(spec):  # BatchNorm on a one-value batch: the user's model could not train either
        spec = Spec(**{**spec.__dict__, "norm": False})
    return spec


def _monitor(spec: Spec) -> str:
    return {"val_loss": "val_loss", "other": "val_score", "none": "train_loss"}[spec.validation]


def _logger(spec: Spec, root: str) -> Logger | bool:
    if spec.logger == "csv":
        return CSVLogger(root)
    if spec.logger == "tensorboard":
        return TensorBoardLogger(root)
    return False


def _fit(spec: Spec, root: str, callbacks: list[pl.Callback], **overrides: Any) -> pl.Trainer:
    """Build ``spec`` and fit it under ``TRAINER`` (and ``overrides``), no seeding; warnings dropped."""
    model, train, val = build(spec)
    return fit(trainer_factory(root, **TRAINER), model, train, val, callbacks=callbacks, seed=None, warns="ignore",
               logger=_logger(spec, root), precision=spec.precision, accumulate_grad_batches=spec.accumulate,
               **overrides).trainer


def check_never_crashes(spec: Spec, action: str) -> None:
    """Fit ``spec`` under ``Recipe`` with every fix on; fail with the spec if the pack raised."""
    recipe = Recipe(**EVERY_FIX, nonfinite_action=action, monitor=_monitor(spec))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as root:
        try:
            trainer = _fit(spec, root, [recipe])
        except TipError as err:
            assert action == "raise", f"TipError({err.code!r}) with nonfinite_action={action!r}: {spec}"
            assert err.code in CODES, f"TipError with unregistered code {err.code!r}: {spec}"
            return
        except Exception as err:
            try:  # the generator's fault or the pack's?
                _fit(spec, root, [])
            except Exception as plain:
                raise AssertionError(f"the generator made an invalid set-up {spec}: {plain!r}") from plain
            raise AssertionError(f"training crashed under Recipe: {err!r}\n{spec}") from err
    assert trainer.state.finished, spec
    assert all(f.code in CODES for f in recipe.findings), spec
    assert trainer.global_step >= 1, spec


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(spec=specs(), action=st.sampled_from(["warn", "warn", "warn", "raise"]))
def test_never_crash(spec: Spec, action: str) -> None:
    """200 generated set-ups (~35 s on 2 cores): ``Recipe`` with every fix on never crashes the fit."""
    check_never_crashes(spec, action)


def test_missing_early_stopping_monitor_is_an_info_inside_recipe() -> None:
    """Inside ``Recipe`` early stopping on a metric that is not available (no validation loop) is a skipped
    ``info``, never a crash (#10 item 5); ``EarlyStopping(strict=True)`` alone keeps Lightning's error."""
    spec = Spec(validation="none")
    recipe = Recipe(early_stopping=True, monitor="val_loss", preflight=False)
    with tempfile.TemporaryDirectory() as root:
        trainer = _fit(spec, root, [recipe])
    assert trainer.state.finished
    assert any(f.skipped and "val_loss" in f.message for f in recipe.findings)


def test_raise_variant_carries_the_code() -> None:
    """NaN in the inputs with ``nonfinite_action="raise"``: a TipError whose code names the failure."""
    spec = Spec(nan="input")
    recipe = Recipe(**EVERY_FIX, nonfinite_action="raise")
    with tempfile.TemporaryDirectory() as root, pytest.raises(TipError) as info:
        _fit(spec, root, [recipe])
    assert info.value.code in ("nonfinite-input", "nonfinite-loss", "nonfinite-gradient")


def test_specs_are_valid_setups() -> None:
    """The generator makes set-ups a plain Trainer fits (so a crash under Recipe is the pack's)."""
    for spec in (Spec(arch="cnn", norm=True, batch_size=2, height=1, width=1), Spec(arch="embedding", task="tagging"),
                 Spec(arch="transformer", optimization="manual2", scheduler="plateau", validation="none")):
        assert valid_spec(spec)
        with tempfile.TemporaryDirectory() as root:
            assert _fit(spec, root, []).global_step >= 1
    assert torch.is_tensor(build(Spec())[0](torch.zeros(1, 2)))


# --- regressions: crashes the fuzz found, each fixed in the library ----------------------------------
def test_regression_layer_grad_norms_under_float64_default_dtype() -> None:
    """Found by the fuzz (64-true precision, manual optimization): inside ``training_step`` Lightning's
    double precision makes float64 the default dtype, and ``layer_grad_norms`` summed float32 norms
    into a default-dtype accumulator (``index_add_``: Double vs Float)."""
    from lightning_tips.checks.gradients import layer_grad_norms

    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    net(torch.ones(4, 2)).sum().backward()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        names, norms = layer_grad_norms(net)
    finally:
        torch.set_default_dtype(previous)
    assert names == ["0", "1"] and norms.dtype == torch.float32 and bool(torch.isfinite(norms).all())


def test_regression_recipe_64_true_manual_optimization() -> None:
    spec = Spec(arch="mlp", task="binary", outputs=1, batch_size=1, optimization="manual", precision="64-true",
                validation="none")
    check_never_crashes(spec, "warn")


def test_regression_snapshot_ensemble_64_true() -> None:
    """Found by the fuzz: under ``precision="64-true"`` the snapshot ensemble fed the loader's float32
    batches to the float64 model copy (Lightning's loops convert them with ``convert_input``)."""
    spec = Spec(arch="conv1d", task="multiclass", outputs=3, features=3, seq_len=2, precision="64-true",
                validation="other")
    recipe = Recipe(**EVERY_FIX, nonfinite_action="warn", monitor="val_score")
    with tempfile.TemporaryDirectory() as root:
        _fit(spec, root, [recipe], max_steps=-1)  # two full epochs: two snapshots
    ensemble = [f for f in recipe.findings if f.code == "snapshot-ensemble"]
    assert ensemble and "ensemble of the last 2 snapshots" in ensemble[-1].message, ensemble


@pytest.mark.parametrize("spec", [Spec(nested_loaders=True), Spec(precision="64-true")], ids=["dict-of-loaders", "64-true"])
def test_regression_preflight_first_batch_as_the_loop_gives_it(spec: Spec) -> None:
    """Found by the fuzz (a finding, not a crash): with a dict of training loaders the pre-flight took
    the dict's first *key* as the batch, and under ``64-true`` it fed float32 batches to the float64
    model — every model check reported "could not run on this model". The first batch now has the
    loop's layout and goes through the precision plugin's ``convert_input``."""
    recipe = Recipe(preflight_budget_s=5.0)
    with tempfile.TemporaryDirectory() as root:
        _fit(spec, root, [recipe])
    broken = [f.message for f in recipe.findings if "could not run on this model" in f.message]
    assert not broken, broken

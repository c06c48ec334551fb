"""Recipe: what it composes from its arguments, bad arguments, the guard's period, and a healthy
run that stays silent."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import pytest

import lightning_tips as lt
from tests.helpers import fitting
from tests.helpers.data import DigitsDataModule
from tests.helpers.models import Classifier, small_cnn
from tests.helpers.runtime_models import NaNAtStep


def _names(recipe: lt.Recipe) -> list[str]:
    return [type(c).__name__ for c in recipe.children]


def test_defaults_are_checks_and_views_only() -> None:
    assert _names(lt.Recipe()) == [
        "Preflight", "NonFiniteGuard", "GradientStats", "ActivationStats", "LRDecayGuard", "LearningCurves",
        "FixedBatchPredictions", "FirstLayerFilters",
    ]


def test_fixes_are_explicit_and_ordered() -> None:
    recipe = lt.Recipe(weight_init="auto", forget_gate_bias=1.0, output_bias_init=True, gradient_clip=1.0,
                       lr_floor=0.01, early_stopping=True, snapshot_ensemble=2, preflight=False, activations=False)
    names = _names(recipe)
    # init fixes first (WeightInit zeroes the biases the next two set); clipping after the gradient observers
    assert names[:3] == ["WeightInit", "ForgetGateBias", "OutputBiasInit"]
    assert names.index("GradientStats") < names.index("GradientClipping")
    assert {"EarlyStopping", "SnapshotEnsemble"} <= set(names)
    guard = recipe.child(lt.LRDecayGuard)
    assert isinstance(guard, lt.LRDecayGuard) and guard.floor == 0.01


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"every_n_steps": -1}, "Expected every_n_steps to be an int >= 0 but got -1"),
    ({"view_every_n_steps": -1}, "Expected view_every_n_steps"),
    ({"snapshot_ensemble": 1}, "snapshot_ensemble to be 0"),
    ({"gradient_clip": 1.0, "adaptive_clipping": True}, "either gradient_clip"),
])
def test_bad_arguments_say_what_to_do(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lt.Recipe(**kwargs)


def test_guard_period_follows_the_sampling_unless_asked() -> None:
    def guard(**kw: Any) -> lt.NonFiniteGuard:
        g = lt.Recipe(**kw).child(lt.NonFiniteGuard)
        assert isinstance(g, lt.NonFiniteGuard)
        return g

    assert (guard(every_n_steps=50).every_n_steps, guard(every_n_steps=50).full_every_n_steps) == (50, 50)
    assert guard(nonfinite_every_n_steps=1).every_n_steps == 1
    assert guard(nonfinite_action="skip").every_n_steps == 1


def test_period_zero_turns_off_every_periodic_part_and_keeps_the_start_and_end(make_trainer: Any) -> None:
    """Recipe(every_n_steps=0, view_every_n_steps=0): no sampled statistics, no guard, no periodic
    pictures; the pre-flight card, the start pictures and the first and last curve charts remain."""
    from lightning_tips._loggers import files_dir

    recipe = lt.Recipe(every_n_steps=0, view_every_n_steps=0)
    trainer = fitting.fit(make_trainer, lambda: NaNAtStep(small_cnn(), bad_step=3), datamodule=DigitsDataModule(),
                          callbacks=[recipe], warns="ignore", max_epochs=2, limit_train_batches=6,
                          limit_val_batches=2).trainer
    assert trainer.global_step == 12  # the guard is off: a NaN at step 3 does not stop training
    grads, guard = recipe.child(lt.GradientStats), recipe.child(lt.NonFiniteGuard)
    assert isinstance(grads, lt.GradientStats) and grads._steps == []
    assert isinstance(guard, lt.NonFiniteGuard) and guard.reported_steps == []
    card = recipe.child(lt.Preflight)
    assert isinstance(card, lt.Preflight) and len(card.card) == len(card.checks)
    pictures = sorted(p.name for p in files_dir(trainer).glob("*.png"))
    assert [p for p in pictures if p.startswith("tips_first_layer_filters")] == ["tips_first_layer_filters_step0000000.png"]
    curves = [p for p in pictures if p.startswith("tips_learning_curves")]  # the first point and the end
    assert curves == ["tips_learning_curves_step0000006.png", "tips_learning_curves_step0000012.png"]


def test_a_nan_between_sampled_steps_is_reported_with_its_step_and_stops_training(make_trainer: Any) -> None:
    pl.seed_everything(0)
    recipe = lt.Recipe(every_n_steps=4, preflight=False)
    trainer = make_trainer(callbacks=[recipe], max_steps=20, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        trainer.fit(NaNAtStep(small_cnn(), bad_step=5), DigitsDataModule())
    [nan] = [f for f in recipe.findings if f.code == "nonfinite-loss"]
    assert nan.step == 5 and nan.severity.value == "error" and "every_n_steps=1" in nan.message
    assert trainer.global_step == 9  # noticed at the sampled step 8, stopped after it
    assert sum("[nonfinite-loss]" in str(w.message) for w in rec) == 1


def test_healthy_digits_run_reports_nothing_but_the_seed_note(make_trainer: Any) -> None:
    recipe = lt.Recipe(every_n_steps=5, view_every_n_steps=10)
    trainer = make_trainer(callbacks=[recipe], max_epochs=3, limit_train_batches=10, limit_val_batches=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(small_cnn(), lr=3e-3), DigitsDataModule())
    assert [f.code for f in recipe.findings] == ["no-seed"]
    card = recipe.child(lt.Preflight)
    assert isinstance(card, lt.Preflight) and len(card.card) == len(card.checks)
    assert all(line.status == "pass" for line in card.card)


@pytest.mark.parametrize("part", [lt.FixedBatchPredictions, lt.DataChecks, lt.FirstBatchView])
def test_batch_keys_are_forwarded(part: type) -> None:
    """`input_key`/`target_key` reach the parts that read inputs and targets (DataChecks and FirstBatchView
    through Preflight)."""
    recipe = lt.Recipe(input_key="pixels", target_key="cls")
    child = recipe.child(part)
    assert (child.input_key, child.target_key) == ("pixels", "cls")


def test_batch_keys_are_validated_under_their_recipe_names() -> None:
    for kwargs, name in (({"input_key": 5}, "input_key"), ({"target_key": ""}, "target_key")):
        with pytest.raises((TypeError, ValueError), match=name):
            lt.Recipe(**kwargs)
    assert lt.Recipe().child(lt.FixedBatchPredictions) is not None  # unset keys are not forwarded

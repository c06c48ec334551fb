"""The examples run as their users run them — ``python examples/<name>.py ...`` — in-process through
``runpy`` (``sys.argv`` patched, outputs in ``tmp_path``) to spare a ~5 s interpreter start each.

examples/cli.py is exercised by tests/test_lightning_cli.py (as a subprocess: LightningCLI reads
``sys.argv`` and saves its config in the working directory).
"""

from __future__ import annotations

import csv
import runpy
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import lightning_tips as lt
from tests.helpers.subproc import REPO

EXAMPLES = REPO / "examples"
Run = Callable[..., dict]


@pytest.fixture
def run_example(monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run_example("quickstart.py", "--max-epochs", "1")``: the script as ``__main__``."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the examples put their folder on sys.path

    def run(script: str, *args: str) -> dict:
        monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *args])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(does not have many workers|log_every_n_steps).*")
            return runpy.run_path(str(EXAMPLES / script), run_name="__main__")

    return run


def _printed_card_and_summary(out: str) -> None:
    assert "lightning_tips first batch" in out
    assert "lightning_tips pre-flight" in out
    assert "input-independent baseline" in out  # a row of the card
    assert "lightning_tips: " in out and ("finding(s)" in out)  # the end-of-fit summary


# --- quickstart -----------------------------------------------------------------------------------
@pytest.mark.parametrize("logger", ["none", "tensorboard", "csv"])
def test_quickstart(logger: str, run_example: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_example("quickstart.py", "--logger", logger, "--max-epochs", "1", "--out", str(tmp_path))
    out = capsys.readouterr().out
    _printed_card_and_summary(out)
    if logger == "none":  # the views fall back to files under default_root_dir/tips
        tips = tmp_path / "tips"
    elif logger == "tensorboard":
        events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
        assert len(events) == 1 and events[0].stat().st_size > 10_000  # images and histograms inside
        return
    else:
        run_dir = tmp_path / "csv" / "version_0"
        with (run_dir / "metrics.csv").open() as f:
            header = next(csv.reader(f))
        assert {"val_loss", "val_acc", "tips/grad_norm/total"} <= set(header)
        tips = run_dir / "tips"
    names = {p.name for p in tips.iterdir()}
    assert "tips_preflight.csv" in names and "tips_summary.csv" in names  # tables, one row per check / finding
    for prefix in ("tips_first_batch_step", "tips_first_layer_filters_step", "tips_fixed_batch_predictions_step",
                   "tips_learning_curves_step"):
        assert any(n.startswith(prefix) and n.endswith(".png") for n in names), prefix


def test_quickstart_wandb_offline(run_example: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    wandb = pytest.importorskip("wandb")
    if wandb.run is not None:  # a run left open elsewhere would be reused by the logger
        wandb.finish()
    monkeypatch.setenv("WANDB_MODE", "offline")  # conftest disables W&B; never the network
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    try:
        run_example("quickstart.py", "--logger", "wandb", "--max-epochs", "1", "--out", str(tmp_path))
    finally:
        wandb.finish()  # the script leaves its run to the interpreter's exit
    _printed_card_and_summary(capsys.readouterr().out)
    runs = list(tmp_path.glob("wandb/offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media"
    images = {p.relative_to(media / "images").as_posix().rsplit("_", 2)[0] for p in media.rglob("images/**/*.png")}
    assert {"tips/first_batch", "tips/first_layer_filters", "tips/fixed_batch/predictions",
            "tips/learning_curves"} <= images
    assert list(media.glob("table/tips/preflight_*.table.json"))


# --- buggy model ------------------------------------------------------------------------------------
def test_buggy_model_findings_name_every_planted_bug(run_example: Run, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        namespace = run_example("buggy_model.py", "--out", str(tmp_path))
    planted = set(namespace["PLANTED"])
    assert planted == {"unnormalized-input", "unshuffled-data", "no-seed", "output-activation", "loss-reduction",
                       "batch-mixing", "dead-activation"}
    warned = {str(w.message)[1:].split("]", 1)[0] for w in caught if issubclass(w.category, lt.TipWarning)}
    # one root cause, one warning: a planted bug whose symptom another planted bug explains by
    # lt.ROOT_CAUSES (the dead ReLUs of the first conv, fed raw 0..255 pixels) is kept as evidence
    # ("consequence of [unnormalized-input]" info in the summary), not warned a second time
    explained = {f.code for f in namespace["recipe"].findings if f.cause in planted and f.cause != f.code}
    assert planted <= warned | explained, planted - warned - explained
    out = capsys.readouterr().out
    assert f"planted bugs caught: {len(planted)}/{len(planted)}" in out and "missed:" not in out
    assert "lightning_tips pre-flight" in out
    assert "| batch-mixing" in out and "| error" in out  # the summary table, errors first


# --- Optuna ------------------------------------------------------------------------------------------
def test_optuna_search(run_example: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("optuna")
    namespace = run_example("optuna_search.py", "--n-trials", "2", "--max-epochs", "1", "--out", str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("lightning_tips pre-flight") == 2  # lt.Recipe() in each trial
    table = out[out.index("trial  state"):]
    assert table.count("COMPLETE") == 2  # the median pruner waits for 2 finished trials
    assert "best: trial " in out
    assert namespace["PruneOnValLoss"].__module__ == "__main__"


def test_optuna_pruning_callback_prunes() -> None:
    """The small pruning callback reports val_loss per epoch and raises TrialPruned when told."""
    optuna = pytest.importorskip("optuna")
    module = runpy.run_path(str(EXAMPLES / "optuna_search.py"), run_name="optuna_search")
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask()
    cb = module["PruneOnValLoss"](trial)
    trainer = type("T", (), {"sanity_checking": False, "current_epoch": 0, "callback_metrics": {"val_loss": 0.5}})()
    cb.on_validation_end(trainer, None)  # below the threshold: goes on
    trainer.current_epoch, trainer.callback_metrics = 1, {"val_loss": 2.0}
    with pytest.raises(optuna.TrialPruned):
        cb.on_validation_end(trainer, None)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {0: 0.5, 1: 2.0}


def test_optuna_missing_gives_the_pip_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lightning-tips\[optuna\]'"):
        runpy.run_path(str(EXAMPLES / "optuna_search.py"), run_name="optuna_search")

"""What a ``Recipe`` leaves in W&B (offline), TensorBoard and CSV logs, and filtering findings.

A planted-bug CNN on the digits (a very negative bias kills most of the first ReLU's channels; a
``Softmax`` ends the model although the loss is ``cross_entropy``) trains for 2 short epochs with
``lt.Recipe(every_n_steps=5, view_every_n_steps=5)``:

- W&B, offline (``WANDB_MODE=offline``, every W&B directory in ``tmp_path``: nothing touches the
  network or the home directory): the findings as a ``wandb.Table``, a count per code in the run
  summary, the pictures as PNGs under stable ``tips/...`` keys. Histograms live only in W&B's
  binary run file (wandb ships no reader), so they are asserted through TensorBoard:
- TensorBoard + CSV in one fit: histograms, images and finding texts in the event file (read back
  with ``EventAccumulator``); files under ``<log_dir>/tips/`` for the CSV logger.
- Findings are ``TipWarning``s: one code can be silenced (and is still recorded) or escalated to
  an error with the ``warnings`` module.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from PIL import Image
from torch import nn

import lightning_tips as lt
from lightning_tips._loggers import FINDING_COLUMNS
from tests.helpers import fitting
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import trainer_factory
from tests.helpers.models import Classifier, small_cnn

PLANTED = {"dead-activation", "output-activation"}
# the picture groups a Recipe draws on this model (first conv: net.0, ReLUs: net.1 and net.3)
IMAGE_GROUPS = {
    "first_layer_filters",  # FirstLayerFilters (R4.11)
    "first_batch",  # Preflight's first-batch view (R1)
    "fixed_batch/predictions",  # FixedBatchPredictions (R2.11)
    "learning_curves",  # LearningCurves (T2)
    "activations_over_time/net.1",  # ActivationStats (R4.12)
    "activations_over_time/net.3",
}


def planted_model() -> Classifier:
    """small_cnn with 6 of its 8 first-conv channels dead from the start, and a Softmax output."""
    net = small_cnn()
    with torch.no_grad():
        net[0].bias[:6].fill_(-20.0)  # inputs are standardised: these channels never fire
    net.append(nn.Softmax(dim=1))  # and cross_entropy gets probabilities
    return Classifier(net, lr=1e-3)


def fit(logger: Logger | list[Logger] | bool, root: Path, **recipe_kwargs: Any) -> lt.Recipe:
    """Seed 0, fit the planted model 2 epochs of 10 train / 2 val batches under ``Recipe``; warnings dropped."""
    pl.seed_everything(0, verbose=False)
    recipe = lt.Recipe(**{"every_n_steps": 5, "view_every_n_steps": 5, **recipe_kwargs})
    fitting.fit(trainer_factory(root), planted_model, DigitsDataModule(), callbacks=[recipe], seed=None,
                warns="ignore", max_epochs=2, limit_train_batches=10, limit_val_batches=2, logger=logger)
    return recipe


def _group(rel: Path) -> str:
    """``learning_curves_34_5c23d6.png`` -> ``learning_curves`` (W&B appends step and hash)."""
    m = re.fullmatch(r"(.*)_\d+_[0-9a-f]+\.(png|table\.json)", rel.as_posix())
    assert m, rel
    return m.group(1)


def _not_black(image: Path | bytes) -> None:
    arr = np.asarray(Image.open(io.BytesIO(image) if isinstance(image, bytes) else image).convert("RGB"))
    assert arr.size and arr.max() > 0 and arr.std() > 1.0, f"blank image (max {arr.max()}, std {arr.std():.2f})"


# --- W&B, offline ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    wandb = pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb_views")
    if wandb.run is not None:  # a run left open elsewhere would be reused by the logger
        wandb.finish()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(root / "wandb-home"))
        logger = WandbLogger(save_dir=str(root), offline=True, project="lightning-tips-test")
        try:
            recipe = fit(logger, root)
            # offline runs of wandb 0.31 write no wandb-summary.json: read the summary before finish
            summary = {k: v for k, v in dict(logger.experiment.summary).items() if k.startswith("tips/findings/")}
            mode = logger.experiment.settings.mode
        finally:
            wandb.finish()
        runs = sorted(root.glob("wandb/*run-*"))
        yield SimpleNamespace(recipe=recipe, summary=summary, mode=mode, runs=runs,
                              files=runs[0] / "files" if runs else root)


def test_wandb_run_is_offline(wandb_run: SimpleNamespace) -> None:
    assert wandb_run.mode in ("offline", "dryrun")  # wandb spells offline "dryrun" internally
    assert len(wandb_run.runs) == 1 and wandb_run.runs[0].name.startswith("offline-run-")
    assert {f.code for f in wandb_run.recipe.findings} >= PLANTED


def test_wandb_findings_table(wandb_run: SimpleNamespace) -> None:
    """The findings as a ``wandb.Table`` (re-logged whole on each new finding: the last has all)."""
    tables = sorted((wandb_run.files / "media" / "table" / "tips").glob("findings_*.table.json"))
    assert tables, sorted(p.name for p in wandb_run.files.rglob("*.json"))
    data = [json.loads(p.read_text()) for p in tables]
    last = max(data, key=lambda d: len(d["data"]))
    assert last["columns"] == FINDING_COLUMNS == ["code", "severity", "skipped", "step", "module", "message", "advice"]
    rows = {r[0]: dict(zip(last["columns"], r)) for r in last["data"]}
    assert set(rows) == {f.code for f in wandb_run.recipe.findings}
    dead, act = rows["dead-activation"], rows["output-activation"]
    assert dead["severity"] == "warning" and dead["module"] == "net.1" and "never fired" in dead["message"]
    assert "R4.12" in dead["advice"]
    assert act["severity"] == "warning" and "probabilities" in act["message"]
    assert isinstance(dead["step"], int)


def test_wandb_summary_counts_per_code(wandb_run: SimpleNamespace) -> None:
    counts: dict[str, int] = {}
    for f in wandb_run.recipe.findings:
        counts[f"tips/findings/{f.code}"] = counts.get(f"tips/findings/{f.code}", 0) + 1
    assert wandb_run.summary == counts
    assert wandb_run.summary["tips/findings/dead-activation"] == 1
    assert wandb_run.summary["tips/findings/output-activation"] == 1


def test_wandb_images_under_stable_grouped_keys(wandb_run: SimpleNamespace) -> None:
    base = wandb_run.files / "media" / "images" / "tips"
    pngs = sorted(base.rglob("*.png"))
    groups = {_group(p.relative_to(base)) for p in pngs}
    assert groups >= IMAGE_GROUPS, groups  # (a view added to Recipe later may add a group)
    for group in IMAGE_GROUPS:  # the latest picture of each group has content
        _not_black(max((p for p in pngs if _group(p.relative_to(base)) == group), key=lambda p: p.stat().st_mtime))
    # the pictures are re-drawn as training goes (view_every_n_steps=5 over 20 steps)
    assert sum(_group(p.relative_to(base)) == "first_layer_filters" for p in pngs) >= 3
    table_dir = wandb_run.files / "media" / "table" / "tips"
    tables = {_group(p.relative_to(table_dir)) for p in table_dir.rglob("*.table.json")}
    assert {"findings", "preflight", "summary", "fixed_batch/table", "first_batch_fields"} <= tables


# --- TensorBoard and CSV, one fit ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tb_csv_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("tb_csv_views")
    tb, csv = TensorBoardLogger(str(root), name="tb"), CSVLogger(str(root), name="csv")
    recipe = fit([tb, csv], root)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb.log_dir, size_guidance={"histograms": 0, "images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    return SimpleNamespace(recipe=recipe, events=events, csv_dir=Path(csv.log_dir))


def test_tensorboard_histograms_images_and_findings(tb_csv_run: SimpleNamespace) -> None:
    ev, tags = tb_csv_run.events, tb_csv_run.events.Tags()
    assert {"tips/activations/net.1", "tips/activations/net.3"} <= set(tags["histograms"])
    assert {"tips/grad_hist/net.0", "tips/grad_hist/net.2", "tips/grad_hist/net.6"} <= set(tags["histograms"])
    dead = ev.Histograms("tips/activations/net.1")
    assert len(dead) >= 3 and dead[0].histogram_value.num > 0  # every sampled step: 0, 5, 10, 15
    assert set(tags["images"]) >= {f"tips/{g}" for g in IMAGE_GROUPS}
    for group in IMAGE_GROUPS:
        _not_black(ev.Images(f"tips/{group}")[-1].encoded_image_string)
    texts = {t.removesuffix("/text_summary") for t in tags["tensors"]}
    assert {f"tips/findings/{c}" for c in PLANTED} <= texts
    assert {"tips/preflight", "tips/summary"} <= texts
    body = ev.Tensors("tips/findings/dead-activation/text_summary")[0].tensor_proto.string_val[0].decode()
    assert body.startswith("[dead-activation] warning:")
    assert {"tips/grad_norm/total", "tips/dead_fraction/net.1", "tips/curves/val_loss"} <= set(tags["scalars"])
    assert ev.Scalars("tips/dead_fraction/net.1")[0].value > 0.5


def test_csv_logger_files(tb_csv_run: SimpleNamespace) -> None:
    tips = tb_csv_run.csv_dir / "tips"
    names = {p.name for p in tips.iterdir()}
    assert {"findings.csv", "tips_preflight.csv", "tips_summary.csv", "tips_activations_net.1_histogram.csv",
            "tips_grad_hist_net.0_histogram.csv"} <= names, sorted(names)
    for prefix in ("tips_first_layer_filters_step", "tips_learning_curves_step", "tips_first_batch_step",
                   "tips_fixed_batch_predictions_step", "tips_activations_over_time_net.1_step"):
        pngs = sorted(tips.glob(f"{prefix}*.png"))
        assert pngs, prefix
        _not_black(pngs[-1])
    import csv

    with (tips / "findings.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == FINDING_COLUMNS
    assert {r["code"] for r in rows} >= PLANTED
    assert {r["code"] for r in rows} == {f.code for f in tb_csv_run.recipe.findings}
    # scalars go through CSVLogger's own metrics.csv
    header = (tb_csv_run.csv_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "tips/dead_fraction/net.1" in header


# --- filtering findings with the warnings module -----------------------------------------------------
def _small_fit(tmp_path: Path) -> list[lt.TipCallback]:
    pl.seed_everything(0, verbose=False)
    callbacks: list[lt.TipCallback] = [lt.ActivationStats(every_n_steps=1), lt.OutputActivationCheck()]
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False, callbacks=callbacks,
        accelerator="cpu", devices=1, default_root_dir=tmp_path, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(planted_model(), DigitsDataModule(limit=192))
    return callbacks


def test_silence_one_code_keeps_the_finding(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=r"\[dead-activation\]", category=lt.TipWarning)
        activations, output = _small_fit(tmp_path)
    emitted = [str(w.message) for w in caught if issubclass(w.category, lt.TipWarning)]
    assert not [m for m in emitted if m.startswith("[dead-activation]")]
    assert [m for m in emitted if m.startswith("[output-activation]")]  # other codes still speak
    assert "dead-activation" in {f.code for f in activations.findings}  # silenced, still recorded
    assert "output-activation" in {f.code for f in output.findings}


def test_escalate_one_code_to_an_error(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("error", message=r"\[dead-activation\]", category=lt.TipWarning)
        with pytest.raises(lt.TipWarning, match=r"^\[dead-activation\] warning: .*net\.1"):
            _small_fit(tmp_path)

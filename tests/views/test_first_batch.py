"""The first-batch view (R2.10): fields, shapes and dtypes printed once; the inputs as an image grid
or a table under ``tips/first_batch``; a batch without tensors is skipped with a reason. ``Preflight``
composes the view next to its data checks; the data checks alone draw nothing."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_tips import TipWarning
from lightning_tips._loggers import files_dir
from lightning_tips.checks.data import DataChecks
from lightning_tips.preflight import Preflight
from lightning_tips.views.first_batch import FirstBatchView, describe_batch, is_image_like, log_first_batch
from tests.helpers import fitting
from tests.helpers.data import breast_cancer_tensors
from tests.helpers.data_bugs import TokenClassifier, digit_tokens, digits_split, loader
from tests.helpers.models import Classifier, mlp, small_cnn


def fit(make_trainer: Callable[..., pl.Trainer], model: pl.LightningModule, train: Any,
        **trainer_kw: Any) -> tuple[pl.Trainer, FirstBatchView]:
    """One train batch, no validation, no seeding, under ``FirstBatchView()``; warnings dropped."""
    view = FirstBatchView()
    trainer = fitting.fit(make_trainer, model, train, callbacks=[view], seed=None, warns="ignore",
                          limit_train_batches=1, limit_val_batches=0, **trainer_kw).trainer
    return trainer, view


def test_describe_batch() -> None:
    batch = {"image": torch.tensor([[1.0, -2.0]]), "mask": torch.tensor([[True, False]]), "empty": torch.zeros(0, 3)}
    rows = describe_batch(batch)
    assert rows[0] == ("batch['image']", (1, 2), "float32", -2.0, 1.0)
    assert rows[1] == ("batch['mask']", (1, 2), "bool", 0.0, 1.0)
    assert rows[2][:3] == ("batch['empty']", (0, 3), "float32") and math.isnan(rows[2][3])
    assert describe_batch((torch.ones(2, dtype=torch.bfloat16),))[0][2:] == ("bfloat16", 1.0, 1.0)


def test_is_image_like() -> None:
    assert is_image_like(torch.zeros(4, 3, 8, 8)) and is_image_like(torch.zeros(4, 28, 28))
    assert is_image_like(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    assert not is_image_like(torch.zeros(4, 30))  # tabular
    assert not is_image_like(torch.zeros(4, 8, 8, dtype=torch.long))  # integer ids
    assert not is_image_like(torch.zeros(4, 1, 1, 30))  # too thin to be a picture


def test_image_batch_is_a_png_and_fields_are_printed_once(
    make_trainer: Callable[..., pl.Trainer], capsys: pytest.CaptureFixture[str]
) -> None:
    (x, y), _ = digits_split()
    trainer, view = fit(make_trainer, Classifier(small_cnn()), loader(x, y, shuffle=False))
    out = capsys.readouterr().out
    assert out.count("lightning_tips first batch") == 1
    assert "[64, 1, 8, 8]" in out and "float32" in out and "int64" in out
    pngs = list(files_dir(trainer).glob("tips_first_batch_step*.png"))
    assert len(pngs) == 1
    caption = pngs[0].with_suffix(".txt").read_text()
    assert "32 of 64 samples" in caption and "labels: " + " ".join(str(v) for v in y[:32].tolist()) in caption
    assert f"[{x[:32].min().item():.4g}, {x[:32].max().item():.4g}]" in caption
    assert not [f for f in view.findings if f.code == "view-skipped"]


def test_tabular_batch_is_a_table(make_trainer: Callable[..., pl.Trainer], capsys: pytest.CaptureFixture[str]) -> None:
    x, y = breast_cancer_tensors(normalize=True)
    trainer, _ = fit(make_trainer, Classifier(mlp(30, 2)), loader(x, y, batch_size=32, shuffle=False))
    assert "[32, 30]" in capsys.readouterr().out
    with (files_dir(trainer) / "tips_first_batch.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", *[f"x{j}" for j in range(20)], "label"]  # first 20 columns + the label
    assert len(rows) == 1 + 16  # first 16 rows
    assert float(rows[1][1]) == pytest.approx(x[0, 0].item(), rel=1e-3) and rows[1][-1] == str(int(y[0]))


def test_token_ids_are_a_table_of_ints(make_trainer: Callable[..., pl.Trainer]) -> None:
    x, y = digit_tokens()
    trainer, _ = fit(make_trainer, TokenClassifier(), loader(x, y, shuffle=False))
    with (files_dir(trainer) / "tips_first_batch.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[1][1:21] == [str(int(v)) for v in x[0, :20]]


def test_batch_without_tensors_is_skipped(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer = make_trainer()
    assert log_first_batch(trainer, {"text": ["a", "b"]}) == "the batch holds no tensor"
    assert not files_dir(trainer).exists()


def test_the_view_reports_a_batch_it_cannot_draw_once(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer, view = make_trainer(), FirstBatchView()
    with pytest.warns(TipWarning, match=r"\[view-skipped\] info: first batch view: the batch holds no tensor"):
        for batch_idx in (0, 0, 1):  # drawn (or skipped) once per fit, at batch 0 of step 0 only
            view.on_train_batch_start(trainer, Classifier(mlp(30, 2)), {"text": ["a", "b"]}, batch_idx)
    (f,) = view.findings
    assert (f.code, f.severity.value, f.skipped, f.module) == ("view-skipped", "info", True, "first_batch")
    assert f.message == "first batch view: the batch holds no tensor"


def test_preflight_composes_the_view_and_the_data_checks_alone_draw_nothing(
    make_trainer: Callable[..., pl.Trainer], capsys: pytest.CaptureFixture[str]
) -> None:
    names = [type(c).__name__ for c in Preflight(input_key="x", target_key="y").children]
    assert names[1] == "DataChecks" and names[-1] == "FirstBatchView"
    (view,) = [c for c in Preflight(input_key="x", target_key="y").children if isinstance(c, FirstBatchView)]
    assert (view.input_key, view.target_key) == ("x", "y")
    assert not [c for c in Preflight(data=False).children if isinstance(c, FirstBatchView)]
    (x, y), _ = digits_split()
    trainer = fitting.fit(make_trainer, Classifier(small_cnn()), loader(x, y, shuffle=False),
                          callbacks=[DataChecks(first_batch=True)], seed=None, warns="ignore",
                          limit_train_batches=1, limit_val_batches=0).trainer
    assert "lightning_tips first batch" not in capsys.readouterr().out
    assert not list(files_dir(trainer).glob("tips_first_batch*"))

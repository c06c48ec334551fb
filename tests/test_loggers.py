"""The one logger adapter: W&B (offline files), TensorBoard (event files), CSV and no logger (files)."""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from PIL import Image

from lightning_tips import TipCallback
from lightning_tips._loggers import (
    files_dir,
    log_histogram,
    log_image,
    log_scalars,
    log_table,
    log_text,
    require,
)
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit
from tests.helpers.models import Classifier, small_cnn

GRADIENT = np.linspace(0.0, 1.0, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)


class EveryView(TipCallback):
    """Logs one of each kind of view at batch 1 and reports one finding."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 1:
            log_image(trainer, "tips/test_image", GRADIENT, caption="range [0, 1]")
            log_histogram(trainer, "tips/test_hist", torch.randn(500))
            log_table(trainer, "tips/test_table", ["a", "b"], [[1, "x"], [2, "y"]])
            log_text(trainer, "tips/test_text", "hello")
            log_scalars(trainer, {"tips/test_scalar": 3.5})
            self.report(trainer, "dead-activation", "warning", "60% of units never fire", module="net.1")


def _fit(make_trainer: Any, logger: Any) -> tuple[Any, EveryView]:
    cb = EveryView()
    with pytest.warns(UserWarning):
        trainer = fit(make_trainer, lambda: Classifier(small_cnn()), DigitsDataModule(), callbacks=[cb], seed=None,
                      warns="pass", logger=logger, limit_train_batches=3, limit_val_batches=0).trainer
    return trainer, cb


def test_no_logger_writes_files_under_the_run_dir(make_trainer: Any, tmp_path: Path) -> None:
    trainer, _ = _fit(make_trainer, False)
    out = files_dir(trainer)
    assert out == tmp_path / "tips"
    png = Image.open(out / "tips_test_image_step0000002.png")
    assert png.size == (16, 16) and np.asarray(png).std() > 10  # not an all-black picture
    assert (out / "tips_test_image_step0000002.txt").read_text().strip() == "range [0, 1]"
    hist = (out / "tips_test_hist_histogram.csv").read_text().splitlines()
    assert hist[0] == "step,low,high,count" and sum(int(r.split(",")[3]) for r in hist[1:]) == 500
    assert (out / "tips_test_table.csv").read_text().splitlines() == ["step,a,b", "2,1,x", "2,2,y"]
    assert "hello" in (out / "tips_test_text.txt").read_text()
    assert "2,tips/test_scalar,3.5" in (out / "scalars.csv").read_text()
    findings = (out / "findings.csv").read_text().splitlines()
    assert findings[0] == "code,severity,skipped,step,module,message,advice"
    assert findings[1].startswith("dead-activation,warning,,2,net.1,60% of units never fire,")
    assert (out / "tips_summary.csv").exists()


def test_csv_logger_writes_files_under_its_log_dir(make_trainer: Any, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path / "csv")
    trainer, _ = _fit(make_trainer, logger)
    out = Path(logger.log_dir) / "tips"
    assert files_dir(trainer) == out
    assert (out / "tips_test_image_step0000002.png").exists() and (out / "findings.csv").exists()
    assert "tips/test_scalar" in (Path(logger.log_dir) / "metrics.csv").read_text()


def test_tensorboard_receives_images_histograms_text_and_scalars(make_trainer: Any, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    _fit(make_trainer, logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "tips/test_image" in tags["images"] and "tips/test_hist" in tags["histograms"]
    assert "tips/test_scalar" in tags["scalars"]
    text_tags = set(tags["tensors"])
    assert {"tips/test_table/text_summary", "tips/test_text/text_summary",
            "tips/findings/dead-activation/text_summary"} <= text_tags
    finding = acc.Tensors("tips/findings/dead-activation/text_summary")[0].tensor_proto.string_val[0].decode()
    assert finding.startswith("[dead-activation] warning: 60% of units never fire")
    img = acc.Images("tips/test_image")[0]
    assert (img.width, img.height) == (16, 16)


def test_wandb_offline_gets_images_tables_and_finding_counts(make_trainer: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lt-test")
    _fit(make_trainer, logger)
    summary = dict(logger.experiment.summary)
    logger.experiment.finish()
    run = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))[0]
    pngs = glob.glob(f"{run}/files/media/images/tips/test_image*.png")
    assert len(pngs) == 1 and np.asarray(Image.open(pngs[0])).std() > 10  # uint8, not black
    table = glob.glob(f"{run}/files/media/table/tips/findings*.table.json")
    data = json.loads(Path(table[0]).read_text())
    assert data["columns"] == ["code", "severity", "skipped", "step", "module", "message", "advice"]
    assert data["data"][0][:5] == ["dead-activation", "warning", "", 2, "net.1"]
    assert glob.glob(f"{run}/files/media/table/tips/test_table*.table.json")
    assert glob.glob(f"{run}/files/media/table/tips/summary*.table.json")
    assert summary["tips/findings/dead-activation"] == 1


class OddLogger(Logger):
    """A logger the adapter does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "odd"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def test_unknown_logger_falls_back_to_files_and_says_so_once(make_trainer: Any, tmp_path: Path) -> None:
    from lightning_tips import _loggers

    _loggers._warned_unknown.discard("OddLogger")
    logger = OddLogger()
    with pytest.warns(UserWarning) as rec:
        trainer = make_trainer(callbacks=[EveryView()], logger=logger, limit_train_batches=3, limit_val_batches=0)
        trainer.fit(Classifier(small_cnn()), DigitsDataModule())
    said = [w for w in rec if "does not know how to log" in str(w.message)]
    assert len(said) == 1 and "OddLogger" in str(said[0].message)
    assert (tmp_path / "tips" / "tips_test_image_step0000002.png").exists()
    assert {"tips/test_scalar": 3.5} in logger.metrics


def test_missing_optional_dependency_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lightning-tips\[wandb\]'"):
        require("wandb")


def test_off_rank_zero_nothing_is_logged(tmp_path: Path) -> None:
    class FakeTrainer:
        is_global_zero = False
        loggers: list[Any] = []
        default_root_dir = str(tmp_path)
        global_step = 0

    for fn, args in ((log_image, ("k", GRADIENT)), (log_table, ("k", ["a"], [[1]])), (log_text, ("k", "t")),
                     (log_scalars, ({"a": 1.0},)), (log_histogram, ("k", torch.ones(3)))):
        fn(FakeTrainer(), *args)  # type: ignore[operator]
    assert not (tmp_path / "tips").exists()


def test_fast_dev_run_is_quiet_and_writes_nothing(tmp_path: Path) -> None:
    """Lightning suppresses logging under fast_dev_run (a DummyLogger): no 'does not know how to log'
    warning, no files; the findings still reach the callback."""
    import warnings as _w

    import lightning.pytorch as pl

    import lightning_tips as lt
    from tests.helpers.models import Classifier, small_cnn
    from tests.helpers.preflight_models import digits_loader

    recipe = lt.Recipe(every_n_steps=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, fast_dev_run=True, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[recipe])
    with _w.catch_warnings(record=True) as rec:
        _w.simplefilter("always")
        trainer.fit(Classifier(small_cnn()), train_dataloaders=digits_loader())
    assert not [w for w in rec if "does not know how to log" in str(w.message)]
    assert not list(tmp_path.rglob("tips")) and not list(tmp_path.rglob("*.png")), sorted(tmp_path.rglob("*"))
    assert recipe.findings  # the findings channel itself is unchanged

"""FixedBatchPredictions: pure interpretation of outputs, rendering, real fits for classification
(image and tabular), regression and token inputs, skipped layouts, checkpoint round-trip, and
pure observation with BatchNorm + Dropout."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips import TipWarning
from lightning_tips._loggers import files_dir
from lightning_tips.views.predictions import (
    FixedBatchPredictions,
    PredictionSummary,
    eval_forward,
    is_image_batch,
    pick_batch,
    render_prediction_grid,
    render_regression_scatter,
    summarize_predictions,
)
from tests.helpers.curves_models import (
    DictBatchModel,
    DictDataset,
    Regressor,
    TupleOutputModel,
    bn_dropout_cnn,
)
from tests.helpers.data import DigitsDataModule, breast_cancer_tensors, loaders
from tests.helpers.fitting import fit
from tests.helpers.models import Classifier, TokenClassifier, mlp, small_cnn

MakeTrainer = Callable[..., pl.Trainer]


def read_table(trainer: pl.Trainer) -> list[dict[str, str]]:
    with (files_dir(trainer) / "tips_fixed_batch_table.csv").open() as f:
        return list(csv.DictReader(f))


def images(trainer: pl.Trainer) -> list[Path]:
    return sorted(files_dir(trainer).glob("tips_fixed_batch_predictions_step*.png"))


# --- pure functions --------------------------------------------------------------------------------
def test_summarize_multiclass_binary_regression() -> None:
    s = summarize_predictions(torch.tensor([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]]), torch.tensor([1, 2]))
    assert isinstance(s, PredictionSummary) and s.kind == "classification"
    assert s.predicted == [1, 0] and s.correct == [True, False] and s.confidence[1] > 0.99
    onehot = summarize_predictions(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 1.0]]))
    assert isinstance(onehot, PredictionSummary) and onehot.true == [1] and onehot.predicted == [1]
    b = summarize_predictions(torch.tensor([[2.0], [-1.0]]), torch.tensor([1.0, 1.0]))  # BCE-with-logits style
    assert isinstance(b, PredictionSummary) and b.kind == "classification"
    assert b.predicted == [1, 0] and b.confidence == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item(),
                                                                    1 - torch.sigmoid(torch.tensor(-1.0)).item()])
    r = summarize_predictions(torch.tensor([0.5, 2.0]), torch.tensor([0.7, 1.0]))
    assert isinstance(r, PredictionSummary) and r.kind == "regression"
    cols, rows = r.rows([10, 11])
    assert cols == ["index", "true", "predicted", "abs_error"]
    assert rows == [[10, 0.7, 0.5, 0.2], [11, 1.0, 2.0, 1.0]]
    multi = summarize_predictions(torch.zeros(2, 3), torch.ones(2, 3) * 0.5)  # (N, 3) float: regression
    assert isinstance(multi, PredictionSummary) and multi.kind == "regression"
    assert multi.rows()[1][0][3] == 0.5
    assert isinstance(summarize_predictions(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long)), str)
    assert isinstance(summarize_predictions(torch.zeros(4, 7, 3), torch.zeros(4, 7, dtype=torch.long)), str)


def test_is_image_batch() -> None:
    assert is_image_batch(torch.zeros(2, 1, 8, 8)) and is_image_batch(torch.zeros(2, 3, 8, 8))
    assert is_image_batch(torch.zeros(2, 28, 28))
    assert not is_image_batch(torch.zeros(2, 64))
    assert not is_image_batch(torch.zeros(2, 1, 8, 8, dtype=torch.long))  # token ids are no image
    assert not is_image_batch({"x": torch.zeros(2, 1, 8, 8)})


def test_render_grid_colours_right_green_wrong_red() -> None:
    summary = PredictionSummary("classification", [1, 2, 3, 4], [1, 0, 3, 0], [0.9, 0.6, 0.8, 0.5])
    img = render_prediction_grid(torch.rand(4, 1, 8, 8), summary, "step 0")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    pixels = img.reshape(-1, 3).astype(int)
    green = ((pixels[:, 1] > 120) & (pixels[:, 0] < 60) & (pixels[:, 2] < 100)).sum()
    red = ((pixels[:, 0] > 180) & (pixels[:, 1] < 60) & (pixels[:, 2] < 60)).sum()
    assert green > 50 and red > 50  # titles and frames of right and wrong panels
    all_right = PredictionSummary("classification", [1, 2], [1, 2], [0.9, 0.9])
    pixels = render_prediction_grid(torch.rand(2, 1, 8, 8).expand(2, 3, 8, 8), all_right).reshape(-1, 3).astype(int)
    assert ((pixels[:, 0] > 180) & (pixels[:, 1] < 60) & (pixels[:, 2] < 60)).sum() == 0  # no red anywhere


def test_render_scatter() -> None:
    img = render_regression_scatter(PredictionSummary("regression", [0.0, 1.0, 2.0], [0.1, 0.9, 2.5], []))
    assert img.dtype == np.uint8 and img.shape[2] == 3 and img.std() > 0


def test_eval_forward_restores_modes_rng_and_stats() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(4)))
    net[3].eval()  # a frozen sub-block must stay frozen
    modes = [m.training for m in net.modules()]
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(3)
    state = torch.get_rng_state()
    out = eval_forward(net, torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    assert not out.requires_grad
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(stats[k], v) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), state)


def test_pick_batch_reads_dataset_by_index_and_falls_back_to_iteration() -> None:
    ds = TensorDataset(torch.arange(40.0).reshape(20, 2), torch.arange(20))
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    picked = pick_batch(loader, 5)
    assert picked is not None
    (x, y), idx = picked
    assert idx == [0, 1, 2, 3, 4] and y.tolist() == idx and x.shape == (5, 2)
    unbatched = DataLoader(ds, batch_size=None)  # yields samples: iterate
    picked = pick_batch([(torch.zeros(10, 3), torch.ones(10))], 4)  # a plain iterable of batches
    assert picked is not None and picked[1] is None and picked[0][0].shape == (4, 3)
    assert pick_batch(unbatched, 3) is not None
    assert pick_batch(None, 3) is None


@pytest.mark.parametrize(("kwargs", "match"), [({"every_n_steps": -1}, "every_n_steps"),
                                                ({"num_samples": 0}, "num_samples"),
                                                ({"every_n_steps": 2.0}, "every_n_steps")])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"Expected {match}"):
        FixedBatchPredictions(**kwargs)


def test_lightning_cli_can_build_it() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(FixedBatchPredictions, "view")
    cb = parser.instantiate_classes(parser.parse_args(["--view.every_n_steps=50"])).view
    assert (cb.every_n_steps, cb.num_samples) == (50, 16)


# --- real fits -------------------------------------------------------------------------------------
def test_image_classification_grid_and_table_files(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    cb = FixedBatchPredictions(every_n_steps=5, num_samples=12)
    trainer = make_trainer(max_epochs=1, limit_train_batches=12, limit_val_batches=1, callbacks=[cb])
    trainer.fit(Classifier(small_cnn(), lr=1e-2), datamodule=DigitsDataModule())
    assert cb.findings == []
    assert cb.indices == list(range(12)) and cb.batch[0].shape == (12, 1, 8, 8)
    assert cb.batch[0].device.type == "cpu"
    # the start (0), sampled steps 5 and 10, the end (12)
    assert [p.name[-11:-4] for p in images(trainer)] == ["0000000", "0000005", "0000010", "0000012"]
    rows = read_table(trainer)
    assert len(rows) == 4 * 12
    assert list(rows[0]) == ["step", "index", "true", "predicted", "confidence"]
    val_labels = DigitsDataModule().val.tensors[1][:12].tolist()
    assert [int(r["true"]) for r in rows[:12]] == val_labels  # the first validation samples
    last = rows[-12:]
    first = rows[:12]
    acc = lambda rs: sum(r["true"] == r["predicted"] for r in rs)  # noqa: E731
    assert acc(last) > acc(first)  # training shows in the predictions


def test_tabular_binary_table_only_and_tensorboard(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0)
    train, val = loaders(*breast_cancer_tensors())
    cb = FixedBatchPredictions(every_n_steps=4, num_samples=8)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(max_epochs=1, limit_train_batches=8, limit_val_batches=1, callbacks=[cb], logger=logger)
    trainer.fit(Classifier(mlp(30, 2, hidden=16), lr=1e-2), train, val)
    assert cb.findings == []
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert "tips/fixed_batch/predictions" not in acc.Tags()["images"]  # tabular inputs: no image grid
    assert any(t.startswith("tips/fixed_batch/table") for t in acc.Tags()["tensors"])


def test_image_grid_logged_to_tensorboard(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0)
    cb = FixedBatchPredictions(every_n_steps=0, num_samples=4)  # only at the start and the end
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, callbacks=[cb], logger=logger)
    trainer.fit(Classifier(small_cnn(), lr=1e-2), datamodule=DigitsDataModule())
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("tips/fixed_batch/predictions")] == [0, 3]


def test_regression_scatter_and_table(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    x = torch.randn(256, 5)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.1 * torch.randn(256)
    train, val = loaders(x, y)
    cb = FixedBatchPredictions(every_n_steps=0, num_samples=10)
    trainer = make_trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=1, callbacks=[cb])
    trainer.fit(Regressor(5), train, val)
    assert cb.findings == []
    assert len(images(trainer)) == 2
    rows = read_table(trainer)
    assert list(rows[0]) == ["step", "index", "true", "predicted", "abs_error"] and len(rows) == 20
    assert float(rows[0]["true"]) == pytest.approx(val.dataset.tensors[1][0].item(), abs=1e-4)


def test_token_ids_get_a_table(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    x = torch.randint(0, 50, (128, 12))
    y = (x[:, 0] < 25).long()
    train, val = loaders(x, y)
    cb = FixedBatchPredictions(every_n_steps=2, num_samples=6)
    trainer = make_trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=1, callbacks=[cb])
    trainer.fit(TokenClassifier(50, 2, bag=True), train, val)
    assert cb.findings == []
    assert images(trainer) == []
    assert len(read_table(trainer)) == 3 * 6  # steps 0, 2, 4


def test_dict_batch_without_known_keys_is_skipped_once(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    cb = FixedBatchPredictions(every_n_steps=1)
    trainer = make_trainer(max_epochs=1, limit_train_batches=4, callbacks=[cb])
    with pytest.warns(TipWarning, match=r"\[view-skipped\] info: FixedBatchPredictions skipped: the batch layout"):
        trainer.fit(DictBatchModel(mlp()), DataLoader(DictDataset(), batch_size=16))
    (f,) = cb.findings
    assert (f.code, f.severity.value, f.skipped, f.advice) == ("view-skipped", "info", True, "")
    # the message lists what is accepted and names the arguments to set
    assert "dict with keys ['pixels', 'digit']" in f.message and "input_ids" in f.message and "labels" in f.message
    assert "FixedBatchPredictions(input_key=..., target_key=...)" in f.message
    assert not files_dir(trainer).joinpath("tips_fixed_batch_table.csv").exists()


def test_named_keys_read_a_dict_batch(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    cb = FixedBatchPredictions(every_n_steps=2, num_samples=5, input_key="pixels", target_key="digit")
    trainer = make_trainer(max_epochs=1, limit_train_batches=4, callbacks=[cb])
    trainer.fit(DictBatchModel(mlp()), DataLoader(DictDataset(), batch_size=16))
    assert cb.findings == []
    rows = read_table(trainer)
    assert len(rows) == 3 * 5 and rows[0]["true"] == str(int(DictDataset()[0]["digit"]))  # steps 0, 2, 4


@pytest.mark.parametrize("dict_output", [False, True])
def test_hugging_face_style_module(make_trainer: MakeTrainer, dict_output: bool) -> None:
    """``forward(**batch)`` with ``input_ids``/``attention_mask``/``labels`` and an output with
    ``.logits`` (an object or a dict): the view reads it like any classifier (#12)."""
    from tests.helpers.data_layouts import TinyHFClassifier, TokenDigits

    pl.seed_everything(0)
    cb = FixedBatchPredictions(every_n_steps=2, num_samples=6)
    trainer = make_trainer(max_epochs=1, limit_train_batches=4, callbacks=[cb])
    trainer.fit(TinyHFClassifier(dict_output), DataLoader(TokenDigits(), batch_size=16, shuffle=True))
    assert cb.findings == []
    rows = read_table(trainer)
    assert len(rows) == 3 * 6 and {r["index"] for r in rows} == {str(i) for i in range(6)}
    assert images(trainer) == []  # token ids: the table only


def test_tuple_outputs_are_skipped_once(make_trainer: MakeTrainer) -> None:
    pl.seed_everything(0)
    cb = FixedBatchPredictions(every_n_steps=1)
    trainer = make_trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=1, callbacks=[cb])
    with pytest.warns(TipWarning, match=r"\[view-skipped\].*returned a tuple"):
        trainer.fit(TupleOutputModel(mlp()), datamodule=DigitsDataModule(image=False))
    assert [f.code for f in cb.findings] == ["view-skipped"]


def test_checkpoint_round_trip_keeps_the_fixed_batch(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    pl.seed_everything(0)
    kwargs = {"limit_train_batches": 4, "limit_val_batches": 1, "enable_checkpointing": True}
    first = FixedBatchPredictions(every_n_steps=2, num_samples=6)
    trainer = make_trainer(max_epochs=1, callbacks=[first, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                           **kwargs)
    trainer.fit(Classifier(small_cnn()), datamodule=DigitsDataModule())

    resumed = FixedBatchPredictions(every_n_steps=2, num_samples=6)
    shifted = DigitsDataModule()
    shifted.val = TensorDataset(*(t.flip(0) for t in shifted.val.tensors))  # a different first val batch
    trainer = make_trainer(max_epochs=2, callbacks=[resumed], **kwargs)
    trainer.fit(Classifier(small_cnn()), datamodule=shifted, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.indices == first.indices == list(range(6))
    assert all(torch.equal(a, b) for a, b in zip(resumed.batch, first.batch))
    steps = sorted({int(r["step"]) for r in read_table(trainer)})
    assert steps == [0, 2, 4, 6, 8]  # first fit 0, 2, 4; the resumed fit 6, 8 (4 was logged already)


# --- pure observer ---------------------------------------------------------------------------------
def _fit_state(make_trainer: MakeTrainer, callbacks: list) -> dict[str, torch.Tensor]:
    """Seed 11, 2 epochs of a BatchNorm + Dropout CNN; its final weights and buffers."""
    return fit(make_trainer, lambda: Classifier(bn_dropout_cnn(), lr=1e-2), datamodule=DigitsDataModule(),
               callbacks=callbacks, seed=11, warns="ignore", max_epochs=2, limit_train_batches=5,
               limit_val_batches=1, deterministic=True).weights()


def test_pure_observer_with_batchnorm_and_dropout(make_trainer: MakeTrainer) -> None:
    """Weights AND BatchNorm running statistics bit-identical with and without the view, which runs
    the real module every step here (Dropout draws from the RNG it must leave untouched)."""
    plain = _fit_state(make_trainer, [])
    observed = _fit_state(make_trainer, [FixedBatchPredictions(every_n_steps=1)])
    assert any("running_mean" in k for k in plain)
    assert plain.keys() == observed.keys()
    assert all(torch.equal(plain[k], observed[k]) for k in plain)


def test_a_stream_is_not_read_ahead_the_first_batch_training_sees_is_the_fixed_batch(
    make_trainer: MakeTrainer,
) -> None:
    """A read-once stream (its own cursor and generator): the view keeps the first batch the loop
    hands over instead of reading ahead, so every sample reaches training and the stream's noise
    is what it would have been without the view."""
    from tests.helpers.data import DigitStream

    def run(callbacks: list) -> tuple[DigitStream, Classifier]:
        pl.seed_everything(0)
        stream, model = DigitStream(), Classifier(mlp())
        trainer = make_trainer(max_epochs=1, deterministic=True, callbacks=callbacks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, DataLoader(stream, batch_size=32))
        return stream, model

    plain_stream, plain = run([])
    cb = FixedBatchPredictions(every_n_steps=2, num_samples=8)
    stream, model = run([cb])
    assert stream.cursor == plain_stream.cursor == 128
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))
    assert cb.batch is not None and cb.batch[0].shape == (8, 64) and cb.indices is None
    assert cb.findings == []


def test_pick_batch_reads_a_copy_of_a_dataset_that_owns_a_generator() -> None:
    from tests.helpers.data import NoisyDigits

    ds = NoisyDigits(32)
    state = ds.g.get_state()
    first = pick_batch(DataLoader(ds, batch_size=8, shuffle=True), 4)
    assert first is not None and first[1] == [0, 1, 2, 3]
    assert torch.equal(ds.g.get_state(), state)  # the user's generator did not move
    assert torch.equal(first[0][0], torch.stack([ds[i][0] for i in range(4)]))  # what training would read first

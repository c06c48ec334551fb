"""FirstLayerFilters: the first layer's weights as a grid, in files, W&B and TensorBoard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lightning_tips._render import colorize
from lightning_tips.views.filters import FirstLayerFilters, filter_grid, first_layer_weights
from tests.helpers.activation_models import image_mlp
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit
from tests.helpers.models import Classifier, mlp, small_cnn

Factory = Callable[..., pl.Trainer]


def _fit(make_trainer: Factory, net: nn.Module, cb: pl.Callback | None, *, image: bool = True, batches: int = 4,
         seed: int = 0, **trainer_kwargs: Any) -> tuple[pl.Trainer, Classifier]:
    """``batches`` train batches of 32 digits, no validation, deterministic; warnings dropped."""
    kwargs: dict[str, Any] = {"limit_train_batches": batches, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                              "deterministic": True, **trainer_kwargs}
    model = Classifier(net)
    run = fit(make_trainer, model, datamodule=DigitsDataModule(batch_size=32, image=image, limit=32 * batches),
              callbacks=[cb] if cb is not None else [], seed=seed, warns="ignore", **kwargs)
    return run.trainer, model


# --- pure functions ------------------------------------------------------------------------------
def test_first_layer_weights_cases() -> None:
    name, w = first_layer_weights(small_cnn())  # type: ignore[misc]
    assert name == "0.weight" and tuple(w.shape) == (8, 1, 3, 3)
    name, w = first_layer_weights(image_mlp(), (5, 1, 8, 8))  # type: ignore[misc]
    assert name == "1.weight" and tuple(w.shape) == (16, 1, 8, 8)
    assert first_layer_weights(image_mlp(), (5, 8, 8))[1].shape == (16, 1, 8, 8)  # type: ignore[union-attr,index]
    assert first_layer_weights(image_mlp()) is None  # linear: needs the batch's shape first
    assert first_layer_weights(nn.Sequential(nn.LazyConv2d(4, 3))) is None  # not materialised yet
    reason = first_layer_weights(mlp(), (5, 64))
    assert isinstance(reason, str) and reason.startswith("no conv layer;") and "(5, 64)" in reason
    assert "no linear layer" in str(first_layer_weights(nn.Sequential(nn.ReLU()), (5, 64)))


def test_linear_rows_become_images_in_row_major_order() -> None:
    net = image_mlp()
    _, w = first_layer_weights(net, (2, 1, 8, 8))  # type: ignore[misc]
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2, 5] = 1.0  # the pixel at (2, 5) reads the filter's (2, 5) weight
    assert torch.equal(net[1](x.flatten(1)) - net[1].bias, w[:, 0, 2, 5][None].detach())


def test_corner_pixels_map_to_the_colormap_ends() -> None:
    conv = nn.Conv2d(1, 4, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-0.3, 0.0, 0.1, 0.3]).reshape(4, 1, 1, 1).expand(4, 1, 3, 3))
    img, caption = filter_grid("conv.weight", conv.weight)
    ends = colorize(np.array([[0.0, 0.5, 1.0]]))[0]
    s = 32 // 3  # pixels per weight
    tile = lambda i: img[s * (1 + 4 * (i // 2)), s * (1 + 4 * (i % 2))]  # noqa: E731  (pad 1, tile 3)
    assert (tile(0) == ends[0]).all() and (tile(3) == ends[2]).all() and (tile(1) == ends[1]).all()
    assert (img[0, 0] == 255).all()  # white padding
    assert "range [-0.3, 0.3]" in caption and "colormap viridis" in caption and "4 filters 3x3" in caption


def test_rgb_and_multichannel_filters() -> None:
    w = torch.zeros(2, 3, 5, 5)
    w[1, 0] = 1.0  # filter 1 is pure red at full scale
    img, caption = filter_grid("c.weight", w)
    s = 32 // 5
    assert tuple(img[s, s]) == (128, 128, 128)  # zero = mid-grey
    assert tuple(img[s, s * 7]) == (255, 128, 128)
    assert "3 channels as RGB" in caption
    img2, caption2 = filter_grid("c.weight", torch.randn(3, 2, 3, 3), max_filters=2)
    assert img2.shape[:2] == ((2 * 4 + 1) * 10, (2 * 4 + 1) * 10)  # a row per filter, a tile per channel
    assert "2 channels, one tile per channel" in caption2 and "the first 2 of 3 filters" in caption2


@pytest.mark.parametrize(("kwargs", "error"), [({"every_n_steps": -1}, ValueError), ({"max_filters": 1.5}, TypeError),
                                               ({"colormap": "no-such-map"}, ValueError)])
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="Expected"):
        FirstLayerFilters(**kwargs)


# --- through Trainer.fit -------------------------------------------------------------------------
def test_files_without_logger(make_trainer: Factory, tmp_path: Path) -> None:
    cb = FirstLayerFilters(every_n_steps=2)
    _, model = _fit(make_trainer, small_cnn(), cb)
    pngs = sorted((tmp_path / "tips").glob("tips_first_layer_filters_step*.png"))
    assert [p.name[-11:-4] for p in pngs] == ["0000000", "0000002", "0000004"]  # start, then every 2 steps
    expected, caption = filter_grid("net.0.weight", model.net[0].weight)
    with Image.open(pngs[-1]) as im:
        assert im.size == (expected.shape[1], expected.shape[0]) == (130, 130)  # 3x3 tiles of 3x3 px, x10
        assert np.array_equal(np.asarray(im.convert("RGB")), expected)  # the last picture is the final weights
    assert pngs[-1].with_suffix(".txt").read_text().strip() == f"step 4: {caption}"
    assert cb.findings == []


def test_period_zero_draws_at_the_start_only(make_trainer: Factory, tmp_path: Path) -> None:
    _fit(make_trainer, small_cnn(), FirstLayerFilters(every_n_steps=0))
    pngs = sorted((tmp_path / "tips").glob("tips_first_layer_filters_step*.png"))
    assert [p.name[-11:-4] for p in pngs] == ["0000000"]


def test_image_like_linear_and_flat_input(make_trainer: Factory, tmp_path: Path) -> None:
    cb = FirstLayerFilters()
    _fit(make_trainer, image_mlp(), cb, batches=2)
    caption = next((tmp_path / "tips").glob("tips_first_layer_filters_step*.txt")).read_text()
    assert caption.startswith("step 0: net.1.weight: 16 filters 8x8, 1 channel")

    flat = FirstLayerFilters(every_n_steps=1)
    _fit(make_trainer, mlp(), flat, image=False, batches=3, default_root_dir=tmp_path / "flat")
    assert [(f.code, f.severity.value) for f in flat.findings] == [("view-skipped", "info")]
    assert "not image-like" in flat.findings[0].message
    assert not list((tmp_path / "flat").rglob("*.png"))


def test_wandb_offline_png(make_trainer: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    try:
        _fit(make_trainer, small_cnn(), FirstLayerFilters(every_n_steps=100), batches=2, logger=logger)
    finally:
        wandb.finish()
    pngs = list(tmp_path.glob("wandb/offline-run-*/files/media/images/tips/first_layer_filters_*.png"))
    assert pngs, list(tmp_path.rglob("*"))
    with Image.open(pngs[0]) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (130, 130) and pixels.std() > 10  # not all black


def test_tensorboard_image(make_trainer: Factory, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    _fit(make_trainer, small_cnn(), FirstLayerFilters(every_n_steps=2), batches=2, logger=logger)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert "tips/first_layer_filters" in acc.Tags()["images"]
    events = acc.Images("tips/first_layer_filters")
    assert [e.step for e in events] == [0, 2] and (events[0].width, events[0].height) == (130, 130)


def test_pure_observer_bit_identical_weights(make_trainer: Factory) -> None:
    nets = [small_cnn() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    _, plain = _fit(make_trainer, nets[0], None, seed=5)
    _, observed = _fit(make_trainer, nets[1], FirstLayerFilters(every_n_steps=1), seed=5)
    for (n, a), (_, b) in zip(plain.named_parameters(), observed.named_parameters()):
        assert torch.equal(a, b), n


def test_pickle() -> None:
    import pickle

    assert pickle.loads(pickle.dumps(FirstLayerFilters(max_filters=9))).max_filters == 9

"""One way for tests to fit: seed, build a small Trainer, fit with callbacks, keep what the test asks about.

``fit(make_trainer, model, train, val, callbacks=..., seed=0, **trainer_kwargs)`` returns a :class:`FitResult`
with the trainer, the fitted model, the ``TipWarning`` messages emitted during ``trainer.fit`` and
``weights()`` (a detached copy of the model's state). ``make_trainer`` is the ``make_trainer`` fixture of
``tests/conftest.py`` or any other factory made by :func:`trainer_factory` (``default_root_dir`` of one's
own). ``run_fit`` is the bottom half: fit an already built trainer, return the ``TipWarning`` messages.

What happens to warnings during the fit (``warns``):

- ``"record"``: every warning is caught (none escapes); the ``TipWarning`` messages are kept;
- ``"ignore"``: every warning is dropped;
- ``"pass"``: warnings are left alone (for a caller that wraps the fit in ``pytest.warns``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from lightning_tips.findings import TipWarning

MakeTrainer = Callable[..., pl.Trainer]
Warns = Literal["record", "ignore", "pass"]
ModelOrFactory = pl.LightningModule | Callable[[], pl.LightningModule]

#: The small CPU Trainer of every test: no logger, no checkpointing, no progress bar, 1 epoch.
TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def trainer_factory(root: Path | str, **defaults: Any) -> MakeTrainer:
    """A factory of small CPU Trainers writing under ``root``: :data:`TRAINER_DEFAULTS`, then ``defaults``,
    then the call's keyword arguments. The Trainer is built with warnings silenced."""

    def factory(**kwargs: Any) -> pl.Trainer:
        options: dict[str, Any] = {"default_root_dir": root, **TRAINER_DEFAULTS, **defaults, **kwargs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pl.Trainer(**options)

    return factory


@contextmanager
def caught_warnings(warns: Warns = "record") -> Iterator[list[str]]:
    """Apply ``warns`` (see the module) to the block; the list fills with the ``TipWarning`` messages on exit."""
    messages: list[str] = []
    if warns == "pass":
        yield messages
        return
    with warnings.catch_warnings(record=warns == "record") as caught:
        warnings.simplefilter("always" if warns == "record" else "ignore")
        yield messages
    messages.extend(str(w.message) for w in caught or () if issubclass(w.category, TipWarning))


def run_fit(trainer: pl.Trainer, model: pl.LightningModule, train: Any = None, val: Any = None, *,
            datamodule: pl.LightningDataModule | None = None, warns: Warns = "record",
            ckpt_path: str | Path | None = None) -> list[str]:
    """``trainer.fit(model, train, val, datamodule=..., ckpt_path=...)``; the ``TipWarning`` messages."""
    with caught_warnings(warns) as messages:
        trainer.fit(model, train, val, datamodule=datamodule, ckpt_path=ckpt_path)  # type: ignore[arg-type]
    return messages


@dataclass
class FitResult:
    trainer: pl.Trainer
    model: pl.LightningModule
    #: the ``TipWarning`` messages emitted during the fit (always empty unless ``warns="record"``)
    warnings: list[str] = field(default_factory=list)

    def weights(self) -> dict[str, torch.Tensor]:
        """A detached copy of the model's ``state_dict`` (parameters and buffers) as it is now."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def fit(
    make_trainer: MakeTrainer,
    model: ModelOrFactory,
    train: Any = None,
    val: Any = None,
    *,
    datamodule: pl.LightningDataModule | None = None,
    callbacks: Iterable[pl.Callback] = (),
    seed: int | None = 0,
    warns: Warns = "record",
    ckpt_path: str | Path | None = None,
    **trainer_kwargs: Any,
) -> FitResult:
    """Seed (``pl.seed_everything(seed)``; ``None``: not at all), build the model when given a factory (so
    its initial weights come from the seed), build ``make_trainer(callbacks=[...], **trainer_kwargs)``
    and fit it on ``train``/``val`` or ``datamodule``, warnings handled as ``warns`` says."""
    if seed is not None:
        pl.seed_everything(seed, verbose=False)
    module = model if isinstance(model, pl.LightningModule) else model()
    trainer = make_trainer(callbacks=list(callbacks), **trainer_kwargs)
    messages = run_fit(trainer, module, train, val, datamodule=datamodule, warns=warns, ckpt_path=ckpt_path)
    return FitResult(trainer, module, messages)

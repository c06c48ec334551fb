"""A TipCallback that reports scripted findings, for tests of the findings channel itself."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightning_tips import TipCallback


class Scripted(TipCallback):
    """Reports ``(code, severity, message, figures)`` at the given batch indices of epoch 0."""

    def __init__(self, script: dict[int, list[tuple[str, str, str, dict[str, float]]]]) -> None:
        super().__init__()
        self.script = script

    @property
    def state_key(self) -> str:
        return self._generate_state_key(script=repr(sorted(self.script.items())))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.current_epoch == 0:
            for code, severity, message, figures in self.script.get(batch_idx, []):
                self.report(trainer, code, severity, message, figures=figures, module="net.0")

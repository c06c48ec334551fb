"""Models and recorder callbacks for the loop fixes and checks: clipping, early stopping, lr decay, snapshots."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from tests.helpers.models import Classifier

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class ScheduledClassifier(Classifier):
    """A :class:`Classifier` whose optimizer comes with the scheduler (config) that ``scheduler`` builds.

    ``scheduler(optimizer)`` returns an ``LRScheduler`` or a Lightning scheduler config dict
    (``{"scheduler": ..., "interval": "step"}``); ``optimizer`` is ``"adam"``, ``"adamw"`` or ``"sgd"``.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        optimizer: str = "adam",
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(net, lr=lr, optimizer=optimizer)
        self.scheduler_factory = scheduler

    def configure_optimizers(self) -> Any:
        if self.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr)
        else:
            opt = super().configure_optimizers()
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(opt)
        if not isinstance(sched, dict):
            sched = {"scheduler": sched}
        return {"optimizer": opt, "lr_scheduler": sched}


class DictOutputClassifier(Classifier):
    """A classifier whose ``forward`` returns a dict (views/evaluators that need tensors skip it)."""

    def forward(self, x: torch.Tensor) -> Any:  # type: ignore[override]
        return {"logits": self.net(x)}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x)["logits"], y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.loss_fn(self(x)["logits"], y))


class GradRecorder(Callback):
    """Records, in ``on_before_optimizer_step``, the gradients' total 2-norm and max |g| the optimizer is about
    to use (list it *after* a clipping callback: hooks run in list order)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.max_abs: list[float] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))))
        self.max_abs.append(max(float(g.abs().max()) for g in grads))


class ValidationRecorder(Callback):
    """Records, at each validation end of a fit, the monitored metrics and a CPU copy of the weights."""

    def __init__(self, keys: tuple[str, ...] = ("val_loss", "train_loss")) -> None:
        self.keys = keys
        self.metrics: list[dict[str, float]] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.metrics.append({k: float(m[k]) for k in self.keys if k in m})
        self.weights.append({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()})


class LRRecorder(Callback):
    """Records the first param group's lr the optimizer uses at every optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))


def wide_mlp(in_features: int = 64, num_classes: int = 10, hidden: int = 256) -> nn.Module:
    """A big, unregularised MLP: overfits a small training set quickly."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )

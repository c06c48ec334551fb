"""Models, data and probes for the fixes' tests: imbalanced digits, binary/multilabel/regression
heads, an LSTM over digit rows, and a callback that snapshots the weights when training starts."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips.fixes.forget_gate import ForgetGateBiasMixin
from lightning_tips.fixes.output_bias import OutputBiasInitMixin
from tests.helpers.data import breast_cancer_tensors, digits_tensors
from tests.helpers.fitting import fit
from tests.helpers.models import Classifier, mlp

# --- data -----------------------------------------------------------------------------------------


def imbalanced_digits(image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits with a skewed prior: every 0, every 2nd 1, every 4th 2-4, every 10th 5-9 (~18:9:5:2)."""
    x, y = digits_tensors(normalize=True, image=image)
    keep_every = torch.tensor([1, 2, 4, 4, 4, 10, 10, 10, 10, 10])
    rank_in_class = torch.zeros_like(y)
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        rank_in_class[idx] = torch.arange(len(idx))
    mask = rank_in_class % keep_every[y] == 0
    return x[mask], y[mask]


def synthetic_9_to_1(n: int = 1000, features: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples, 90% class 0 and 10% class 1, features shifted by the class."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 10 == 0).long()
    x = torch.randn(n, features, generator=g) + y[:, None].float()
    return x, y


def multilabel_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Flat digits with 3 float 0/1 labels: even, greater than 6, has a loop (0, 6, 8, 9): rates ~0.5, 0.3, 0.4."""
    x, y = digits_tensors(normalize=True, image=False)
    labels = torch.stack([y % 2 == 0, y > 6, (y == 0) | (y == 6) | (y == 8) | (y == 9)], 1).float()
    return x, labels


def regression_data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = (5 + x0 + noise, -3 + 2 x1 + noise)``: target means ~5 and ~-3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    noise = 0.1 * torch.randn(n, 2, generator=g)
    y = torch.stack([5 + x[:, 0], -3 + 2 * x[:, 1]], 1) + noise
    return x, y


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, shuffle: bool = True, **kw: Any) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, **kw)


def fit_digits(make_trainer: Any, model: pl.LightningModule, callbacks: list[Callback], **kw: Any) -> pl.Trainer:
    """Fit ``model`` on 512 flat digits for ``max_steps`` (default 2) steps, unseeded, warnings silenced."""
    x, y = digits_tensors(image=False)
    return fit(make_trainer, model, loader(x[:512], y[:512]), callbacks=callbacks, seed=None, warns="ignore",
               **{"max_steps": 2, **kw}).trainer


def breast_cancer_binary() -> tuple[torch.Tensor, torch.Tensor]:
    """Breast cancer, normalised, with float 0/1 targets for BCE (63% positives)."""
    x, y = breast_cancer_tensors(normalize=True)
    return x, y.float()


# --- models ---------------------------------------------------------------------------------------


class BCEModule(Classifier):
    """Binary (one logit, targets (N,)) or multilabel (C logits, targets (N, C)) with BCE-with-logits."""

    def __init__(self, net: nn.Module, lr: float = 1e-3) -> None:
        super().__init__(net, lr=lr, loss_fn=self._bce)

    @staticmethod
    def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.reshape(y.shape), y.float())


class Regressor(Classifier):
    """MSE regression."""

    def __init__(self, net: nn.Module, lr: float = 1e-3) -> None:
        super().__init__(net, lr=lr, loss_fn=F.mse_loss)


class DictBatchClassifier(Classifier):
    """Reads ``{"pixels": x, "cls": y}`` batches: keys ``split_batch`` does not know."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # type: ignore[override]
        return F.cross_entropy(self(batch["pixels"]), batch["cls"])


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.x[i], "cls": self.y[i]}


def conv_only(num_classes: int = 10) -> nn.Module:
    """No Linear and no 1x1 conv: a 3x3 conv to ``num_classes`` maps, averaged (no output layer to find)."""
    return nn.Sequential(nn.Conv2d(1, num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class LSTMNet(nn.Module):
    """Reads an 8x8 digit row by row (8 steps of 8 features) with an LSTM (or an LSTMCell loop)."""

    def __init__(self, hidden: int = 16, cell: bool = False, num_classes: int = 10, **lstm_kwargs: Any) -> None:
        super().__init__()
        self.cell = cell
        if cell:
            self.rnn: nn.Module = nn.LSTMCell(8, hidden, bias=lstm_kwargs.get("bias", True))
            out = hidden
        else:
            self.rnn = nn.LSTM(8, hidden, batch_first=True, **lstm_kwargs)
            proj = lstm_kwargs.get("proj_size", 0) or hidden
            out = proj * (2 if lstm_kwargs.get("bidirectional") else 1)
        self.head = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.reshape(len(x), 8, 8)
        if self.cell:
            h = c = seq.new_zeros(len(x), self.rnn.hidden_size)  # type: ignore[arg-type]
            for t in range(8):
                h, c = self.rnn(seq[:, t], (h, c))
            return self.head(h)
        out, _ = self.rnn(seq)
        return self.head(out[:, -1])


class BiasMixinClassifier(OutputBiasInitMixin, Classifier):
    """A classifier that sets its own output bias from the training labels in ``__init__``."""

    def __init__(self, net: nn.Module, y_train: torch.Tensor) -> None:
        super().__init__(net)
        self.init_output_bias(y_train)


class ForgetMixinClassifier(ForgetGateBiasMixin, Classifier):
    """A classifier that sets its LSTMs' forget-gate bias in ``__init__``."""

    def __init__(self, net: nn.Module, value: float = 1.0) -> None:
        super().__init__(net)
        self.set_forget_gate_bias(value)


def digits_mlp(**kw: Any) -> nn.Module:
    return mlp(in_features=64, **kw)


# --- probes ---------------------------------------------------------------------------------------


class Snapshot(Callback):
    """Snapshots the module's parameters and the global torch RNG at fit start and train start.

    Put it after the callbacks under test: it sees what they did before the first step.
    """

    def __init__(self) -> None:
        self.at_fit_start: dict[str, torch.Tensor] = {}
        self.at_train_start: dict[str, torch.Tensor] = {}
        self.rng: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at_fit_start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.rng["fit_start"] = torch.random.get_rng_state()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at_train_start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.rng["train_start"] = torch.random.get_rng_state()


class RNGProbe(Callback):
    """Records the global torch RNG state at fit start and train start (put it BEFORE the callback under test)."""

    def __init__(self) -> None:
        self.rng: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rng["fit_start"] = torch.random.get_rng_state()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rng["train_start"] = torch.random.get_rng_state()

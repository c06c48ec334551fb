"""Generated models and data for the "never crash training" fuzz test (tests/test_fuzz.py).

A :class:`Spec` describes one tiny training job: architecture, task, batch and output layouts, odd
shapes, optimisation (automatic, manual, two optimizers), scheduler, validation, NaN in the data.
:func:`build` turns it into ``(LightningModule, train loader(s), val loader or None)``. Every spec that
:func:`valid_spec` accepts is a valid user set-up — a plain ``Trainer.fit`` runs it — so an exception
under the pack is the pack's (the fuzz re-runs a failing spec without the pack to tell them apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

Arch = Literal["mlp", "mlp3d", "cnn", "conv1d", "lstm", "gru", "transformer", "embedding"]
Task = Literal["multiclass", "binary", "regression", "multilabel", "tagging"]
SEQ_ARCHS = ("mlp3d", "lstm", "gru", "transformer", "embedding")
VOCAB = 7


@dataclass(frozen=True)
class Spec:
    """One generated training job (all sizes tiny)."""

    arch: Arch = "mlp"
    task: Task = "multiclass"
    outputs: int = 2  # classes (multiclass/tagging), labels (multilabel), targets (regression); binary: 1
    binary_squeeze: bool = False  # binary logits as (B,) instead of (B, 1)
    batch_size: int = 2
    remainder: int = 0  # size of the second (last) batch; 0: a full batch
    features: int = 2  # input features (mlp, seq archs) or channels (cnn, conv1d)
    seq_len: int = 2  # sequence length (seq archs) or signal length (conv1d)
    height: int = 3
    width: int = 2
    hidden: int = 3
    norm: bool = False  # a BatchNorm layer (only where plain training can run it)
    batch_layout: Literal["tuple", "list", "dict", "dict_hf", "triple", "opaque_dict"] = "tuple"
    output_layout: Literal["tensor", "tuple", "dict"] = "tensor"
    validation: Literal["none", "val_loss", "other"] = "val_loss"
    optimization: Literal["auto", "manual", "manual2"] = "auto"
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    scheduler: Literal["none", "step_step", "step_epoch", "onecycle", "plateau"] = "none"
    nan: Literal["none", "input", "target"] = "none"
    shuffle: bool = True
    logger: Literal["none", "csv", "tensorboard"] = "none"
    lazy: bool = False  # the head is an nn.LazyLinear (parameters materialise at the first forward)
    frozen: bool = False  # the first layer's parameters do not require grad
    dropout: bool = False  # a Dropout before the head
    uint8: bool = False  # cnn: uint8 images scaled inside forward
    skip_step: bool = False  # training_step returns None on the second batch (automatic optimization)
    nested_loaders: bool = False  # the training loaders as a dict: batches are {"main": batch}
    precision: Literal["32-true", "bf16-mixed", "64-true"] = "32-true"
    accumulate: int = 1  # accumulate_grad_batches (automatic optimization)

    @property
    def integer_inputs(self) -> bool:
        return self.arch == "embedding"

    @property
    def n_samples(self) -> int:
        return self.batch_size + (self.remainder or self.batch_size)


# --- data ------------------------------------------------------------------------------------------
def make_tensors(spec: Spec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of ``spec.n_samples`` samples (NaN planted where the spec says)."""
    g = torch.Generator().manual_seed(seed)
    n = spec.n_samples
    if spec.arch == "mlp":
        x = torch.randn(n, spec.features, generator=g)
    elif spec.arch == "cnn" and spec.uint8:
        x = torch.randint(0, 256, (n, spec.features, spec.height, spec.width), generator=g, dtype=torch.uint8)
    elif spec.arch == "cnn":
        x = torch.randn(n, spec.features, spec.height, spec.width, generator=g)
    elif spec.arch == "conv1d":
        x = torch.randn(n, spec.features, spec.seq_len, generator=g)
    elif spec.arch == "embedding":
        x = torch.randint(0, VOCAB, (n, spec.seq_len), generator=g)
    else:
        x = torch.randn(n, spec.seq_len, spec.features, generator=g)
    k = spec.outputs
    if spec.task == "multiclass":
        y = torch.randint(0, k, (n,), generator=g)
    elif spec.task == "tagging":
        y = torch.randint(0, k, (n, spec.seq_len), generator=g)
    elif spec.task == "binary":
        y = torch.randint(0, 2, (n,) if spec.binary_squeeze else (n, 1), generator=g).float()
    elif spec.task == "multilabel":
        y = torch.randint(0, 2, (n, k), generator=g).float()
    else:
        y = torch.randn(n, k, generator=g)
    if spec.nan == "input" and x.is_floating_point():
        x.view(n, -1)[n - 1, 0] = float("nan")
    elif spec.nan == "target" and y.is_floating_point():
        y.view(n, -1)[n - 1, 0] = float("nan")
    return x, y


class FuzzDataset(Dataset):
    """Samples in the spec's batch layout: ``(x, y)``, ``[x, y]``, dicts, ``(x, y, w)``."""

    def __init__(self, spec: Spec, x: torch.Tensor, y: torch.Tensor) -> None:
        self.layout, self.x, self.y = spec.batch_layout, x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Any:
        x, y = self.x[i], self.y[i]
        if self.layout == "tuple":
            return x, y
        if self.layout == "list":
            return [x, y]
        if self.layout == "dict":
            return {"x": x, "y": y}
        if self.layout == "dict_hf":
            return {"input_ids" if x.dtype == torch.long else "inputs": x, "labels": y, "idx": i, "text": f"s{i}"}
        if self.layout == "triple":
            return x, y, torch.tensor(1.0)
        return {"a": x, "b": y}  # keys no helper recognises


def unpack(spec: Spec, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a collated batch in the spec's layout."""
    if spec.nested_loaders and isinstance(batch, dict) and "main" in batch:
        batch = batch["main"]
    if spec.batch_layout in ("tuple", "list", "triple"):
        return batch[0], batch[1]
    if spec.batch_layout == "dict":
        return batch["x"], batch["y"]
    if spec.batch_layout == "dict_hf":
        return batch.get("input_ids", batch.get("inputs")), batch["labels"]
    return batch["a"], batch["b"]


# --- models ----------------------------------------------------------------------------------------
class SeqMean(nn.Module):
    """Mean over the sequence dimension (dim 1), or identity for per-step outputs."""

    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.keep else x.mean(dim=1)


class RNNBody(nn.Module):
    """An LSTM/GRU returning its output sequence (drops the hidden state tuple)."""

    def __init__(self, kind: str, in_features: int, hidden: int, layers: int) -> None:
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(in_features, hidden, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return out


def make_net(spec: Spec) -> nn.Module:
    """The body and head of the spec's architecture (a plain ``nn.Module``)."""
    net = _make_net(spec)
    head = net[-1]
    if spec.lazy:
        net[-1] = nn.LazyLinear(head.out_features)
    if spec.dropout:
        net = nn.Sequential(*net[:-1], nn.Dropout(0.5), net[-1])
    if spec.frozen:
        net[0].requires_grad_(False)
    return net


def _make_net(spec: Spec) -> nn.Sequential:
    h, k = spec.hidden, (1 if spec.task == "binary" else spec.outputs)
    per_step = spec.task == "tagging"
    layers: list[nn.Module]
    if spec.arch == "mlp":
        layers = [nn.Linear(spec.features, h)]
        if spec.norm:
            layers.append(nn.BatchNorm1d(h))
        layers += [nn.ReLU(), nn.Linear(h, k)]
    elif spec.arch == "cnn":
        layers = [nn.Conv2d(spec.features, h, 3, padding=1)]
        if spec.norm:
            layers.append(nn.BatchNorm2d(h))
        layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(h, k)]
    elif spec.arch == "conv1d":
        layers = [nn.Conv1d(spec.features, h, 3, padding=1), nn.Tanh(), nn.AdaptiveMaxPool1d(1), nn.Flatten(),
                  nn.Linear(h, k)]
    elif spec.arch == "mlp3d":
        layers = [nn.Linear(spec.features, h), nn.GELU(), SeqMean(per_step), nn.Linear(h, k)]
    elif spec.arch in ("lstm", "gru"):
        layers = [RNNBody(spec.arch, spec.features, h, layers=1 + spec.hidden % 2), SeqMean(per_step),
                  nn.Linear(h, k)]
    elif spec.arch == "transformer":
        d = 2 * max(1, h // 2)
        enc = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, nhead=2 if d % 2 == 0 else 1, dim_feedforward=2 * d, dropout=0.1,
                                       batch_first=True),
            num_layers=1, enable_nested_tensor=False,
        )
        layers = [nn.Linear(spec.features, d), enc, SeqMean(per_step), nn.Linear(d, k)]
    else:  # embedding: token ids
        layers = [nn.Embedding(VOCAB, h), RNNBody("gru", h, h, layers=1), SeqMean(per_step), nn.Linear(h, k)]
    return nn.Sequential(*layers)


class FuzzModule(pl.LightningModule):
    """A LightningModule for any :class:`Spec`: loss by task, outputs in the spec's layout,
    automatic or manual optimization (one or two optimizers), any scheduler, optional validation."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        self.net = make_net(spec)
        self.automatic_optimization = spec.optimization == "auto"

    def forward(self, x: torch.Tensor) -> Any:
        if x.dtype == torch.uint8:
            x = x.to(self.dtype) / 255.0
        logits = self.net(x)
        if self.spec.task == "binary" and self.spec.binary_squeeze:
            logits = logits.squeeze(-1)
        if self.spec.output_layout == "tuple":
            return logits, logits.detach()
        if self.spec.output_layout == "dict":
            return {"logits": logits, "aux": logits.detach()}
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self(x)
        return out[0] if isinstance(out, tuple) else (out["logits"] if isinstance(out, dict) else out)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self.spec.task
        if task == "multiclass":
            return F.cross_entropy(logits, y)
        if task == "tagging":
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        if task in ("binary", "multilabel"):
            return F.binary_cross_entropy_with_logits(logits, y)
        return F.mse_loss(logits, y)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = unpack(self.spec, batch)
        loss = self.loss(self.logits(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        if self.spec.skip_step and batch_idx == 1 and self.automatic_optimization:
            return None
        if self.automatic_optimization:
            return {"loss": loss} if self.spec.output_layout == "dict" else loss
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for opt in opts:
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in opts:
            opt.step()
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else ([scheds] if scheds is not None else []):
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(loss.detach())
            else:
                sched.step()
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = unpack(self.spec, batch)
        loss = self.loss(self.logits(x), y)
        self.log("val_loss" if self.spec.validation == "val_loss" else "val_score", loss)

    def _scheduler(self, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        kind = self.spec.scheduler
        if kind == "none":
            return None
        if kind in ("step_step", "step_epoch"):
            return {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
                    "interval": "step" if kind == "step_step" else "epoch"}
        if kind == "onecycle":
            return {"scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=50),
                    "interval": "step"}
        monitor = "val_loss" if self.spec.validation == "val_loss" else "train_loss"
        return {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0), "monitor": monitor}

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.spec.optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.05, momentum=0.9)
        if self.spec.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=1e-2)
        return torch.optim.Adam(params, lr=1e-2)

    def configure_optimizers(self) -> Any:
        params = list(self.parameters())
        groups = [params] if self.spec.optimization != "manual2" else [params[:-1], params[-1:]]
        opts = [self._optimizer(p) for p in groups]
        configs = []
        for opt in opts:
            sched = self._scheduler(opt)
            configs.append({"optimizer": opt, **({"lr_scheduler": sched} if sched else {})})
        return configs[0] if len(configs) == 1 else configs


def build(spec: Spec, seed: int = 0) -> tuple[FuzzModule, Any, DataLoader | None]:
    """The module and loaders of ``spec`` (model weights from ``seed``)."""
    torch.manual_seed(seed)
    model = FuzzModule(spec)
    x, y = make_tensors(spec, seed)
    data = FuzzDataset(spec, x, y)
    train: Any = DataLoader(data, batch_size=spec.batch_size, shuffle=spec.shuffle)
    if spec.nested_loaders:
        train = {"main": train}
    val = None if spec.validation == "none" else DataLoader(data, batch_size=spec.batch_size)
    return model, train, val


def valid_spec(spec: Spec) -> bool:
    """Whether a plain fit can run ``spec`` (BatchNorm needs more than one value per channel in every batch)."""
    if spec.norm:
        smallest = min(spec.batch_size, spec.remainder or spec.batch_size)
        spatial = spec.height * spec.width if spec.arch == "cnn" else 1
        if smallest * spatial < 2:
            return False
    if spec.task == "tagging" and spec.arch not in SEQ_ARCHS:
        return False
    if spec.task == "multilabel" and spec.outputs < 2:
        return False
    if (spec.skip_step or spec.accumulate > 1) and spec.optimization != "auto":
        return False
    if spec.uint8 and spec.arch != "cnn":
        return False
    return not (spec.task == "binary" and spec.outputs != 1)

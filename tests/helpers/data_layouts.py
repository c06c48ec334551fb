"""Batch layouts beyond ``(x, y)``: a Hugging Face-style classifier (``forward(**batch)``, an output
object or dict with ``.logits``) on digit tokens, without ``transformers`` installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.data import digits_tensors


@dataclass
class SequenceClassifierOutput:
    """What ``transformers`` returns from a classification head: ``.loss`` (with labels) and ``.logits``."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class TokenDigits(torch.utils.data.Dataset):
    """Digits as 64 token ids (gray levels 0..16), Hugging Face style: ``{"input_ids",
    "attention_mask", "labels"}``; the last ``i % 8`` tokens of sample ``i`` are padding (mask 0)."""

    def __init__(self, n: int = 256) -> None:
        x, y = digits_tensors(normalize=False, image=False)
        self.ids, self.y = x[:n].long(), y[:n]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        mask = torch.ones(64, dtype=torch.long)
        mask[64 - i % 8 :] = 0
        return {"input_ids": self.ids[i] * mask, "attention_mask": mask, "labels": self.y[i]}


class TinyHFClassifier(pl.LightningModule):
    """A Hugging Face-style sequence classifier: ``forward(input_ids, attention_mask=None,
    labels=None)`` returns an output with ``.logits`` (and ``.loss`` given labels); ``dict_output``
    returns a dict instead (as ``return_dict``-style wrappers do)."""

    def __init__(self, dict_output: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(17, 16)
        self.head = nn.Linear(16, 10)
        self.dict_output = dict_output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Any:
        h = self.embed(input_ids)
        m = attention_mask.unsqueeze(-1).float() if attention_mask is not None else torch.ones_like(h[..., :1])
        logits = self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        if self.dict_output:
            return {"logits": logits, "loss": loss}
        return SequenceClassifierOutput(logits, loss)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(**batch)
        return out["loss"] if self.dict_output else out.loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)

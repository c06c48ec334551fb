"""A model with planted bugs, and the report card that catches them.

    python examples/buggy_model.py                 # 1 epoch, findings printed as they happen
    python examples/buggy_model.py --max-epochs 3  # longer

The bugs, each a classic from the recipe, and the finding code that names it:

=====================================================================  ======================
bug                                                                    finding code
=====================================================================  ======================
pixels fed raw, as bytes 0..255 (forgot to standardise, T12, P6)       ``unnormalized-input``
the training loader does not shuffle (T16)                             ``unshuffled-data``
no ``seed_everything`` (R2.1)                                          ``no-seed``
``nn.Softmax`` at the end, then ``F.cross_entropy`` (softmax twice)    ``output-activation``
``cross_entropy(..., reduction="sum")``: the loss scales with batch     ``loss-reduction``
a ``view`` that flattens channels-first across the batch (R2.12, P12)  ``batch-mixing``
half the first conv's channels start with a bias of -1e4: dead ReLUs    ``dead-activation``
=====================================================================  ======================

Prints the pre-flight report card, the findings as they happen and the end-of-fit summary; the
fix for each is in the finding's advice (``lightning-tips explain CODE`` says more).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits import DigitsCNN, DigitsData

import lightning_tips as lt

PLANTED = (
    "unnormalized-input",
    "unshuffled-data",
    "no-seed",
    "output-activation",
    "loss-reduction",
    "batch-mixing",
    "dead-activation",
)


class RawDigits(DigitsData):
    """Bugs in the data: raw 0..255 pixels (the digits are 0..16: scaled like bytes), no shuffling."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__(batch_size=batch_size, standardize=False, shuffle=False)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        for ds in (self.train_set, self.val_set):
            ds.tensors = (ds.tensors[0] * 16.0, ds.tensors[1])  # 0..256, like uint8 images


class BuggyCNN(DigitsCNN):
    """``DigitsCNN`` with three bugs in the model and one in the loss (see the module docstring)."""

    def __init__(self, channels: int = 16, lr: float = 3e-3) -> None:
        super().__init__(channels=channels, lr=lr)
        self.softmax = nn.Softmax(dim=1)  # bug: the model outputs probabilities...
        with torch.no_grad():  # bug: a bad init kills half of the first ReLU's channels
            self.features[0].bias[: channels // 2 + 1].fill_(-1e4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (N, 2C, 4, 4)
        # bug: meant h.flatten(1); flattening channels-first mixes the samples of the batch
        h = h.transpose(0, 1).reshape(x.shape[0], -1)
        return self.softmax(self.head(h))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        # ...and cross_entropy applies log-softmax again; reduction="sum" scales the loss with the batch
        loss = F.cross_entropy(self(x), y, reduction="sum")
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss


def main(argv: list[str] | None = None) -> lt.Recipe:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("tips_runs/buggy"))
    args = parser.parse_args(argv)

    # bug: no L.seed_everything(...) here
    recipe = lt.Recipe(every_n_steps=5, view_every_n_steps=1000)
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        accelerator="auto",
        devices=1,
        callbacks=[recipe],
        logger=False,
        default_root_dir=str(args.out),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(BuggyCNN(), RawDigits())
    caught = sorted({f.code for f in recipe.findings} & set(PLANTED))
    missed = sorted(set(PLANTED) - set(caught))
    print(f"planted bugs caught: {len(caught)}/{len(PLANTED)} ({', '.join(caught)})")
    if missed:
        print(f"missed: {', '.join(missed)}")
    return recipe


if __name__ == "__main__":
    recipe = main()

"""Quickstart: a small CNN on scikit-learn's digits with ``lt.Recipe()``.

    python examples/quickstart.py                  # TensorBoard logs under tips_runs/quickstart
    python examples/quickstart.py --logger wandb   # W&B, offline (no account, no network)
    python examples/quickstart.py --logger csv     # plain files

Prints the pre-flight report card, the findings as they happen, and the end-of-fit summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits import DigitsCNN, DigitsData

import lightning_tips as lt


def make_logger(kind: str, out: Path) -> object:
    """The logger asked for on the command line; W&B runs offline unless WANDB_MODE says otherwise."""
    if kind == "wandb":
        lt_loggers = __import__("lightning_tips._loggers", fromlist=["require"])
        lt_loggers.require("wandb")
        os.environ.setdefault("WANDB_MODE", "offline")
        return L.pytorch.loggers.WandbLogger(project="lightning-tips-quickstart", save_dir=str(out))
    if kind == "tensorboard":
        return L.pytorch.loggers.TensorBoardLogger(str(out), name="tensorboard")
    if kind == "csv":
        return L.pytorch.loggers.CSVLogger(str(out), name="csv")
    return False


def main(argv: list[str] | None = None) -> L.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logger", choices=["tensorboard", "wandb", "csv", "none"], default="tensorboard")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("tips_runs/quickstart"))
    args = parser.parse_args(argv)

    L.seed_everything(0)  # R2.1: fix the seed
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        accelerator="auto",
        devices=1,
        callbacks=[lt.Recipe(every_n_steps=20, view_every_n_steps=40)],
        logger=make_logger(args.logger, args.out),
        default_root_dir=str(args.out),
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsCNN(), DigitsData())
    return trainer


if __name__ == "__main__":
    main()

"""Hyper-parameter search with Optuna on the digits, with ``lt.Recipe()`` in every trial.

    pip install 'lightning-tips[optuna]'
    python examples/optuna_search.py                           # 5 trials of 3 epochs
    python examples/optuna_search.py --n-trials 20 --max-epochs 5

The TPE sampler is Bayesian optimisation (R5.2); its first trials are random (R5.1). The learning
rate and the weight decay are searched on a log scale (T3). A median pruner stops a trial whose
validation loss after an epoch is worse than the median of the earlier trials at that epoch. Each
trial prints its report card; the findings of every trial are collected at the end, so a setting
that breaks training (a learning rate that makes the loss NaN, dead ReLUs) is visible next to its
score.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits import DigitsCNN, DigitsData

import lightning_tips as lt
from lightning_tips._loggers import require

optuna = require("optuna")  # a missing extra says: pip install 'lightning-tips[optuna]'


class PruneOnValLoss(Callback):
    """Report ``monitor`` to the trial after each validation; raise ``optuna.TrialPruned`` when the
    pruner says so (``optuna.integration.PyTorchLightningPruningCallback`` in a dozen lines)."""

    def __init__(self, trial: Any, monitor: str = "val_loss") -> None:
        self.trial = trial
        self.monitor = monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")


def make_objective(max_epochs: int, out: Path, findings: dict[int, list[str]]) -> Any:
    """The objective: one fit of ``DigitsCNN`` with the trial's lr and weight decay, ``val_loss`` back."""

    def objective(trial: Any) -> float:
        lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)  # T3: log scale
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
        L.seed_everything(trial.number, verbose=False)  # R2.1, one seed per trial
        recipe = lt.Recipe(every_n_steps=20, view_every_n_steps=1000)
        trainer = L.Trainer(
            max_epochs=max_epochs,
            accelerator="auto",
            devices=1,
            callbacks=[recipe, PruneOnValLoss(trial)],
            logger=False,
            default_root_dir=str(out / f"trial_{trial.number}"),
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
        )
        try:
            trainer.fit(DigitsCNN(lr=lr, weight_decay=weight_decay), DigitsData())
        finally:
            findings[trial.number] = sorted({f.code for f in recipe.findings})
        return float(trainer.callback_metrics["val_loss"])

    return objective


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("tips_runs/optuna"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    args = parser.parse_args(argv)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    findings: dict[int, list[str]] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        study.optimize(make_objective(args.max_epochs, args.out, findings), n_trials=args.n_trials)

    print("\ntrial  state     val_loss  lr        weight_decay  findings")
    for t in study.trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        codes = ", ".join(findings.get(t.number, [])) or "-"
        print(f"{t.number:<6} {t.state.name:<9} {value:<9} {t.params['lr']:<9.2e} "
              f"{t.params['weight_decay']:<13.2e} {codes}")
    best = study.best_trial
    print(f"best: trial {best.number}, val_loss {best.value:.4f}, lr {best.params['lr']:.3g}, "
          f"weight_decay {best.params['weight_decay']:.3g}")
    return study


if __name__ == "__main__":
    main()

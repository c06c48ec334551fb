"""LightningCLI over the digits example, with lightning_tips callbacks from YAML or flags.

    python examples/cli.py fit --config examples/config.yaml
    python examples/cli.py fit --trainer.callbacks+=lightning_tips.Recipe --trainer.callbacks.every_n_steps=5
    python examples/cli.py fit --config examples/config.yaml --model.lr=1e-3 --data.batch_size=32
    python examples/cli.py fit --config examples/config.yaml --print_config   # the full resolved config

Every lightning_tips callback is typed (primitives, ``Literal`` choices), so LightningCLI builds it
from ``class_path``/``init_args`` and rejects a bad value before training starts. The flag names
(``--model.lr``, ``--data.batch_size``, ...) are the ones the W&B sweep in ``wandb_sweep.yaml``
sets (R5.1, R5.2).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits import DigitsCNN, DigitsData


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` when given."""
    return LightningCLI(DigitsCNN, DigitsData, save_config_kwargs={"overwrite": True}, args=args, run=run)


if __name__ == "__main__":
    main()

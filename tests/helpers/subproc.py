"""Run a script in a subprocess the way DDP and CLI tests need: clean distributed env, repo on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "RANK",
              "PL_GLOBAL_SEED", "PL_TRAINER_GPUS")


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment minus the distributed variables; W&B off; the repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("WANDB_MODE", "disabled")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_python(args: list[str], timeout: float = 180, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` with :func:`clean_env`; raises ``subprocess.TimeoutExpired`` past ``timeout``."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=clean_env(**env),
        cwd=str(cwd or REPO),
    )

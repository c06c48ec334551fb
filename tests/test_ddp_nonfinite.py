"""A NaN loss on rank 1 only: both ranks stop at the same step, the finding is reported once, nothing hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
def test_nan_on_one_rank_stops_both_ranks_together(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "ddp_nonfinite.py"), str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # both ranks stopped right after step 3 (the NaN), not at max_steps=8
    assert [r["global_step"] for r in ranks] == [4, 4]
    # both ranks hold the same finding (same verdict everywhere) ...
    for r in ranks:
        [f] = r["findings"]
        assert (f["code"], f["step"], f["severity"]) == ("nonfinite-loss", 3, "error")
        assert "on rank 1" in f["message"]
        assert r["finite_weights"]  # the NaN update was dropped on both ranks
    assert ranks[0]["findings"] == ranks[1]["findings"]
    # ... and only rank zero said it
    assert len(ranks[0]["tip_warnings"]) == 1 and ranks[0]["tip_warnings"][0].startswith("[nonfinite-loss] error")
    assert ranks[1]["tip_warnings"] == []

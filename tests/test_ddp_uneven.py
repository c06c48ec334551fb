"""DDP with uneven training data must end, never hang (issue #10 item 1).

Rank 0 gets 64 samples and rank 1 gets 96 (batch 16, ``use_distributed_sampler=False``). With
``Recipe()`` attached the run has to end within a hard timeout — training completes or every rank
exits with a clear error — and the process group is SIGKILLed after it. The pack's collectives carry
a header (site, global step, layout, batches per epoch), so the uneven shards are detected at the
first one and every rank stops with the same message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.subproc import REPO, clean_env

SCRIPT = "tests/scripts/ddp_uneven.py"
HARD_TIMEOUT_S = 240


def _run(mode: str, out: Path) -> tuple[int | None, float, str]:
    """Run the script in its own process group; SIGKILL the whole group past the timeout."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, mode, str(out), "2"], env=clean_env(), cwd=str(REPO), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = proc.communicate(timeout=HARD_TIMEOUT_S)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGUSR1)  # the script dumps every thread's stack: where it hung
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        code = None
    return code, time.perf_counter() - start, output


@pytest.mark.ddp
@pytest.mark.parametrize("mode", ["recipe", "curves"], ids=["Recipe()", "LearningCurves-alone"])
def test_uneven_batches_end_with_a_clear_error_on_every_rank(tmp_path: Path, mode: str) -> None:
    code, seconds, output = _run(mode, tmp_path)
    assert code is not None, f"hung: killed after {seconds:.0f} s\n{output[-6000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # every rank ended: either both completed, or both stopped with the pack's clear message
    outcomes = {r["outcome"] for r in ranks}
    assert outcomes in ({"completed"}, {"error"}), ranks
    if outcomes == {"error"}:
        for r in ranks:
            assert r["error"].startswith("RanksOutOfStep"), r
            assert "different numbers of training batches" in r["error"] and "rank 0: 4, rank 1: 6" in r["error"]
        assert code != 0

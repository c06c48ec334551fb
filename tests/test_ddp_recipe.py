"""``Recipe`` under 2-process CPU DDP (gloo), ``ddp`` and ``ddp_spawn``: a bug in rank 1's data only is
reported, every rank takes the same decisions, only rank zero speaks, and nothing hangs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.subproc import run_python

SCRIPT = "tests/scripts/ddp_recipe.py"


def _run(strategy: str, out: Path) -> tuple[list[dict[str, Any]], str]:
    proc = run_python([SCRIPT, strategy, str(out)], timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return ranks, proc.stdout


def _check(ranks: list[dict[str, Any]], stdout: str, strategy: str) -> None:
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["strategy"] == strategy for r in ranks)
    # both ranks trained to the same step (2 epochs x 6 batches) and agree not to stop
    assert [r["global_step"] for r in ranks] == [12, 12]
    assert [r["should_stop"] for r in ranks] == [False, False]
    assert all(r["finite_weights"] for r in ranks)

    # every decision agrees: the same findings (code, severity, place, step) on both ranks, in the same order
    def key(r: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(f["code"], f["severity"], f["module"], f["step"]) for f in r["findings"]]

    assert key(ranks[0]) == key(ranks[1])
    codes = [f["code"] for f in ranks[0]["findings"]]
    # the bug lives in rank 1's data; the data check's moments are reduced over the ranks, so both ranks report
    # it with the same global mean and std (the dynamic range, a median ratio, stays per rank)
    [unnorm0] = [f for f in ranks[0]["findings"] if f["code"] == "unnormalized-input"]
    [unnorm1] = [f for f in ranks[1]["findings"] if f["code"] == "unnormalized-input"]
    assert unnorm0["severity"] == "warning" and unnorm0["module"] == "batch[0]"
    for fig in ("bad_features", "worst_mean", "worst_std"):
        assert unnorm0["figures"][fig] == unnorm1["figures"][fig], fig
    assert unnorm0["figures"]["worst_mean"] > 100  # rank 1's x * 100 + 500 dominates the global mean
    # the initial loss is per-rank: rank 1's is huge (unnormalised inputs), rank 0's is fine; every rank
    # reports rank 1's verdict with rank 1's figures, saying whose data it is
    [init0] = [f for f in ranks[0]["findings"] if f["code"] == "init-loss"]
    [init1] = [f for f in ranks[1]["findings"] if f["code"] == "init-loss"]
    assert init0["message"] == init1["message"] and init0["message"].endswith("(rank 1's data)")
    assert init0["figures"] == init1["figures"] and init0["figures"]["measured"] > 5
    # ... as evidence of its root cause, the unnormalised inputs (one root cause, one warning)
    assert init0["cause"] == "unnormalized-input" and init0["severity"] == "info"
    assert init0["message"].startswith("consequence of [unnormalized-input]: ")
    # nothing reported twice
    assert len(codes) == len(set(codes))

    # only rank zero warned, once per finding that is not a consequence; rank 1 stayed silent
    loud = [f["code"] for f in ranks[0]["findings"] if f.get("cause") is None]
    assert len(ranks[0]["tip_warnings"]) == len(loud) >= 1
    assert {w[1 : w.index("]")] for w in ranks[0]["tip_warnings"]} == set(loud)
    assert ranks[1]["tip_warnings"] == []
    # one card, one summary: rank 1 printed neither
    assert stdout.count("lightning_tips pre-flight") == 1
    assert stdout.count(f"lightning_tips: {len(codes)} finding(s)") == 1
    # both ranks ran the whole pre-flight card (no check skipped for the budget on one rank only)
    for r in ranks:
        assert [line[0] for line in r["card"]] == [line[0] for line in ranks[0]["card"]]
        assert [line[1] for line in r["card"]] == [line[1] for line in ranks[0]["card"]]
    statuses = {line[0]: line[1] for line in ranks[0]["card"]}
    assert statuses["data"] == "finding"


@pytest.mark.ddp
def test_recipe_under_ddp_agrees_across_ranks(tmp_path: Path) -> None:
    ranks, stdout = _run("ddp", tmp_path)
    _check(ranks, stdout, "DDPStrategy")


@pytest.mark.ddp
def test_recipe_under_ddp_spawn_agrees_across_ranks(tmp_path: Path) -> None:
    # the parent's trainer never trains under ddp_spawn (its global_step stays 0): the workers write the JSON
    ranks, stdout = _run("ddp_spawn", tmp_path)
    _check(ranks, stdout, "DDPStrategy")

"""The cross-rank helper ``lightning_tips._ddp``: named sum/max/min/any/all, gather, broadcast and the
layout / out-of-step checks, single process in-process and across 2 gloo processes (a subprocess)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from lightning_tips import _ddp
from tests.helpers.subproc import run_python


def test_single_process_is_the_identity_with_result_dtypes() -> None:
    t = {"n": torch.tensor([1, 2]), "x": torch.tensor([[0.5]]), "flag": torch.tensor([True, False])}
    out = _ddp.reduce(None, t, "sum", site="unit")
    assert out["n"].tolist() == [1, 2] and out["x"].shape == (1, 1) and out["flag"].dtype == torch.int64
    assert _ddp.reduce(None, {"x": torch.tensor([0.0, 2.0])}, "any", site="unit")["x"].tolist() == [False, True]
    assert _ddp.gather(None, {"row": torch.tensor([1.0, 2.0])}, site="unit")["row"].shape == (1, 2)
    assert _ddp.broadcast_object(None, {"a": 1}, 0, site="unit") == {"a": 1}
    assert _ddp.any_rank(None, True) and not _ddp.all_ranks(None, False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.ddp
def test_two_gloo_processes(tmp_path: Path) -> None:
    proc = run_python(["tests/scripts/ddp_helper.py", str(_free_port()), str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["sum"] == {"count": [3, 10], "x": 2.0, "b": 1}
        assert r["max"] == {"count": [2, 10], "x": 1.5, "b": True}
        assert r["min"] == [1, 0]
        assert r["any"] is True and r["all"] is False
        assert r["gather"] == [[0, 0], [1, 1]]
        assert r["broadcast"] == {"from": 1}
        assert r["skip"] is True
        assert "different layout per rank" in r["layout_error"]
        assert "out of step" in r["out_of_step"] and "`epoch end`" in r["out_of_step"] and "`step`" in r["out_of_step"]
        assert "rank 0: 4, rank 1: 6" in r["uneven"]
    assert ranks[0]["out_of_step"] == ranks[1]["out_of_step"]

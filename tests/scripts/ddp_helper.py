"""``lightning_tips._ddp`` across 2 gloo processes (no Lightning): sum/max/min/any/all over named
tensors, gather, broadcast, the layout check and the out-of-step check. Writes ``OUT/rank<r>.json``.

    python tests/scripts/ddp_helper.py PORT OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_tips import _ddp


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    trainer = SimpleNamespace(world_size=2, global_rank=rank, global_step=7, num_training_batches=5)
    _ddp.setup(trainer)  # type: ignore[arg-type]
    out: dict[str, object] = {"rank": rank}
    t = {"count": torch.tensor([rank + 1, 10 * rank]), "x": torch.tensor(float(rank) + 0.5), "b": torch.tensor(rank == 1)}
    out["sum"] = {k: v.tolist() for k, v in _ddp.reduce(trainer, t, "sum", site="t").items()}  # type: ignore[arg-type]
    out["max"] = {k: v.tolist() for k, v in _ddp.reduce(trainer, t, "max", site="t").items()}  # type: ignore[arg-type]
    out["min"] = _ddp.reduce(trainer, t, "min", site="t")["count"].tolist()  # type: ignore[arg-type]
    out["any"] = _ddp.any_rank(trainer, rank == 1, site="flag")  # type: ignore[arg-type]
    out["all"] = _ddp.all_ranks(trainer, rank == 1, site="flag")  # type: ignore[arg-type]
    out["gather"] = _ddp.gather(trainer, {"row": torch.tensor([rank, rank])}, site="g")["row"].tolist()  # type: ignore[arg-type]
    out["broadcast"] = _ddp.broadcast_object(trainer, {"from": rank}, 1, site="o")  # type: ignore[arg-type]
    # a different layout per rank at the same site and step: skipped on every rank, or raised
    odd = {"v": torch.zeros(rank + 1)}
    out["skip"] = _ddp.reduce(trainer, odd, site="odd", on_mismatch="skip") is None  # type: ignore[arg-type]
    try:
        _ddp.reduce(trainer, odd, site="odd")  # type: ignore[arg-type]
        out["layout_error"] = None
    except _ddp.LayoutMismatch as e:
        out["layout_error"] = str(e)
    # different sites (one rank's epoch ended, the other's did not): every rank raises, nobody waits
    try:
        _ddp.reduce(trainer, {"v": torch.zeros(1)}, site="epoch end" if rank == 0 else "step")  # type: ignore[arg-type]
        out["out_of_step"] = None
    except _ddp.RanksOutOfStep as e:
        out["out_of_step"] = str(e)
    # different batches per epoch: every rank raises at the first collective
    trainer.num_training_batches = 4 + 2 * rank
    try:
        _ddp.reduce(trainer, {"v": torch.zeros(1)}, site="first")  # type: ignore[arg-type]
        out["uneven"] = None
    except _ddp.RanksOutOfStep as e:
        out["uneven"] = str(e)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)

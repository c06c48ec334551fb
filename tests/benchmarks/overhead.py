"""What ``Recipe()`` costs: steady-state step time, pre-flight seconds and peak memory, against a
plain Trainer and W&B's ``watch`` at the same sampling period.

Not part of the test run (pytest's ``norecursedirs`` excludes ``tests/benchmarks``). Run it::

    python tests/benchmarks/overhead.py                 # every variant, 5 interleaved repeats
    python tests/benchmarks/overhead.py --repeats 9 --variants plain recipe watch_all --no-memory

Method (``ENVIRONMENT.md``: on a shared machine only paired, interleaved ratios mean anything):

- one process; every repeat runs every variant once, in a rotated order, on the same small CNN
  (1x28x28 synthetic images, batch 64, Adam, ``torch.set_num_threads(--threads)``, default 2),
  same seed and data; ``--epoch-steps`` steps per epoch (default 125), no validation loop;
- a probe callback placed *first* stamps ``time.perf_counter()`` at every ``on_train_batch_start``:
  a step's time is the gap to the next stamp (everything the loop does: data, forward, backward,
  optimizer, every callback's hooks). The first epoch (and the pre-flight before it) is dropped;
  the timed window is the next ``--window`` steps (default 250: 2 sampled steps, 2 epoch ends);
- per variant and repeat, paired with plain's of the same repeat: the window's mean step time (the
  honest amortized figure), the median ordinary step (neither sampled nor an epoch end), the extra
  milliseconds of one sampled step and of one epoch end, and a modeled ratio for an MNIST-sized
  epoch (``--real-epoch-steps``, default 938) built from those pieces. Median and IQR over repeats;
- train start: ``on_train_start`` of a probe placed *last* minus that of the first probe (the
  ``Preflight`` and the views' first pictures run between them); card: the pre-flight checks' own seconds;
- peak memory: each variant once more in a fresh subprocess (a fit of ``every_n_steps + 11`` steps):
  peak RSS during ``fit`` minus RSS before it (``VmHWM`` reset through ``/proc/self/clear_refs``;
  ``ru_maxrss`` elsewhere) and the ``tracemalloc`` peak (Python heap only); with CUDA also
  ``torch.cuda.max_memory_allocated``;
- with CUDA: the unsampled steps of ``plain``, ``Recipe()`` (the guard reads one on-device flag
  every step by default) and ``Recipe(nonfinite_every_n_steps=100)`` run under
  ``torch.cuda.set_sync_debug_mode("warn")`` (probes switch it on at the start of each unsampled
  step and off at its end); the syncs are counted, the first few located, and the script fails when
  the sync-free setting syncs more than plain.

Targets: Recipe <= 1.02x plain, pre-flight <= 3 s, cheaper than ``watch(log="all")`` at the same period.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="lt-bench-")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ["WANDB_SILENT"] = "true"
for _var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ.setdefault(_var, _TMP)
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_tips import Preflight, Recipe  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)

EVERY_N = 100  # Recipe's default every_n_steps, and the watch variants' log_freq
VARIANTS = ("plain", "recipe", "recipe_nf1", "wandb", "watch_gradients", "watch_all", "recipe_wandb")
DESCRIPTION = {
    "plain": "Trainer, no logger, no callbacks",
    "recipe": "Recipe() at defaults, no logger (files sink)",
    "recipe_nf1": "Recipe(nonfinite_every_n_steps=1): the guard decides before every update",
    "wandb": "WandbLogger(offline), no watch",
    "watch_gradients": f'WandbLogger.watch(log="gradients", log_freq={EVERY_N})',
    "watch_all": f'WandbLogger.watch(log="all", log_freq={EVERY_N})',
    "recipe_wandb": "Recipe() + WandbLogger(offline)",
}


# --- the job -----------------------------------------------------------------------------------------
class SmallCNN(pl.LightningModule):
    """Two conv blocks and a linear head on 1x28x28 images; Adam; logs the epoch training loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def synthetic_images(n: int, seed: int = 0) -> TensorDataset:
    """Ten noisy class prototypes, 1x28x28, standardised."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(10, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    x = prototypes[y] + 0.8 * torch.randn(n, 1, 28, 28, generator=g)
    return TensorDataset((x - x.mean()) / x.std(), y)


# --- probes --------------------------------------------------------------------------------------------
def _sampled(step: int) -> bool:
    return step % EVERY_N in (0, EVERY_N - 1)


class FirstProbe(Callback):
    """Placed first: stamps every batch start and the start of ``on_train_start``; optionally turns
    CUDA sync debugging on for unsampled steps."""

    def __init__(self, sync_debug: bool = False) -> None:
        self.starts: list[tuple[float, int, int]] = []  # (perf_counter, global_step, batch_idx)
        self.train_start = 0.0
        self.sync_debug = sync_debug

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.starts.append((time.perf_counter(), trainer.global_step, batch_idx))
        if self.sync_debug and not _sampled(trainer.global_step) and trainer.global_step > 1:
            # (_sampled covers the step before a sampled one too: hooks at batch end see global_step + 1)
            torch.cuda.set_sync_debug_mode("warn")


class LastProbe(Callback):
    """Placed last: stamps the end of ``on_train_start`` (after the pre-flight); turns sync debugging
    off at the end of each step."""

    def __init__(self) -> None:
        self.train_started = 0.0
        self.card_s = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_started = time.perf_counter()
        self.card_s = 0.0  # the pre-flight card's own seconds (its checks), when a Recipe is there
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            pre = cb.child(Preflight) if isinstance(cb, Recipe) else None
            if isinstance(pre, Preflight):
                self.card_s = sum(line.seconds for line in pre.card)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")


def _callbacks_and_logger(variant: str, model: nn.Module, root: str) -> tuple[list[Callback], Any]:
    callbacks: list[Callback] = []
    logger: Any = False
    if variant in ("wandb", "watch_gradients", "watch_all", "recipe_wandb"):
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(save_dir=root, offline=True, project="lt-bench")
        if variant == "watch_gradients":
            logger.watch(model, log="gradients", log_freq=EVERY_N)
        elif variant == "watch_all":
            logger.watch(model, log="all", log_freq=EVERY_N)
    if variant in ("recipe", "recipe_wandb"):
        callbacks.append(Recipe())
    elif variant == "recipe_nf1":
        callbacks.append(Recipe(nonfinite_every_n_steps=1))
    return callbacks, logger


def run_variant(variant: str, steps: int, data: TensorDataset, seed: int, sync_debug: bool = False,
                before_fit: Callable[[], None] | None = None) -> tuple[FirstProbe, LastProbe]:
    """One fit of ``steps`` steps of ``variant``; the probes hold its timings."""
    pl.seed_everything(seed, verbose=False)
    model = SmallCNN()
    loader = DataLoader(data, batch_size=64, shuffle=True, drop_last=True)
    first, last = FirstProbe(sync_debug), LastProbe()
    with tempfile.TemporaryDirectory(dir=_TMP) as root:
        callbacks, logger = _callbacks_and_logger(variant, model, root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if sync_debug:  # let the sync warnings through to sync_check's recorder
                warnings.filterwarnings("always", message=".*synchroniz.*")
            trainer = pl.Trainer(
                accelerator="auto", devices=1, max_steps=steps, max_epochs=-1, logger=logger,
                callbacks=[first, *callbacks, last], default_root_dir=root, limit_val_batches=0,
                num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False,
            )
            if before_fit is not None:
                before_fit()
            with contextlib.redirect_stdout(io.StringIO()):  # the pre-flight card and the summary
                trainer.fit(model, loader)
        if logger:
            import wandb

            with contextlib.redirect_stdout(io.StringIO()):
                wandb.finish()
    return first, last


# --- statistics ------------------------------------------------------------------------------------------
def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


@dataclass
class StepTimes:
    """One fit's timed window: the mean gap, the median ordinary gap, and the extra seconds a sampled
    step and an epoch end cost over an ordinary step."""

    mean: float
    ordinary: float
    sampled_extra: float
    epoch_extra: float
    n_sampled: int
    n_epoch_ends: int

    def modeled(self, every_n: int, epoch_steps: int) -> float:
        """Mean step seconds for a sampling period and an epoch length (from this fit's pieces)."""
        return self.ordinary + self.sampled_extra / every_n + self.epoch_extra / epoch_steps


def timing(first: FirstProbe, warmup: int, window: int) -> StepTimes:
    """The gaps between consecutive batch starts in ``[warmup, warmup + window)``, split into
    ordinary steps, sampled steps (the gap starting at a multiple of ``EVERY_N`` and the one just
    before it: work at ``on_train_batch_end`` sees the incremented ``global_step``) and epoch ends
    (the gap into ``batch_idx == 0``: loader restart and every epoch-end hook)."""
    s = first.starts
    gaps = [(s[i + 1][0] - s[i][0], s[i][1], s[i + 1][2]) for i in range(len(s) - 1)][warmup: warmup + window]
    if len(gaps) < window:
        raise RuntimeError(f"only {len(gaps)} timed steps (wanted {window}): raise --steps")
    sampled = [g for g, step, _ in gaps if step % EVERY_N in (0, EVERY_N - 1)]
    epoch_ends = [g for g, step, next_idx in gaps if next_idx == 0 and step % EVERY_N not in (0, EVERY_N - 1)]
    ordinary = statistics.median(g for g, step, next_idx in gaps if next_idx != 0 and step % EVERY_N not in (0, EVERY_N - 1))
    n_sampled = len({(step + 1) // EVERY_N for _, step, _ in gaps if step % EVERY_N in (0, EVERY_N - 1)})
    return StepTimes(
        mean=statistics.fmean(g for g, _, _ in gaps),
        ordinary=ordinary,
        sampled_extra=(sum(sampled) - ordinary * len(sampled)) / max(1, n_sampled),
        epoch_extra=(sum(epoch_ends) - ordinary * len(epoch_ends)) / max(1, len(epoch_ends)),
        n_sampled=n_sampled,
        n_epoch_ends=len(epoch_ends),
    )


# --- memory (one fresh process per variant) ---------------------------------------------------------------
def _peak_rss_kib() -> int:
    """The process's peak resident set (KiB): ``VmHWM`` on Linux, else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> bool:
    """Reset the peak-RSS counter (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(variant: str, steps: int, threads: int, data: TensorDataset) -> None:
    torch.set_num_threads(threads)
    marks: dict[str, float] = {}

    def start() -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        marks["reset"] = _reset_peak_rss()
        marks["rss0"] = _peak_rss_kib()
        tracemalloc.start()

    run_variant(variant, steps, data, seed=0, before_fit=start)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {"rss_mib": (_peak_rss_kib() - marks["rss0"]) / 1024, "rss_reset": marks["reset"], "py_peak_mib": peak / 2**20,
           "cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
    print("MEMORY " + json.dumps(out), flush=True)


def measure_memory(variant: str, steps: int, threads: int, epoch_steps: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", variant, "--steps", str(steps), "--threads", str(threads),
         "--epoch-steps", str(epoch_steps)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")), None)
    if line is None:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(line[len("MEMORY "):])


# --- CUDA sync check ------------------------------------------------------------------------------------
def sync_check(data: TensorDataset, steps: int) -> dict[str, int]:
    """Syncs counted on unsampled steps (``set_sync_debug_mode("warn")``) per variant."""
    counts: dict[str, int] = {}
    for variant in ("plain", "recipe", "recipe_nf1"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_variant(variant, steps, data, seed=0, sync_debug=True)
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        counts[variant] = len(syncs)
        for w in syncs[:3]:
            print(f"  [{variant}] sync at {w.filename}:{w.lineno}: {str(w.message)[:100]}")
    return counts


# --- main -----------------------------------------------------------------------------------------------
def _iqr(values: list[float], fmt: str = "{:.3f}") -> tuple[str, str]:
    lo, med, hi = quartiles(values)
    return fmt.format(med), f"{fmt.format(lo)}-{fmt.format(hi)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every variant")
    parser.add_argument("--epoch-steps", type=int, default=125, help="steps per epoch (dataset size / 64)")
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped at the start (default: the first epoch)")
    parser.add_argument("--window", type=int, default=250, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--real-epoch-steps", type=int, default=938, help="epoch length of the modeled column (MNIST: 938)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warmup = args.epoch_steps if args.warmup is None else args.warmup
    steps = args.steps or warmup + args.window + 1
    data = synthetic_images(64 * args.epoch_steps)
    if args.memory_child:
        memory_child(args.memory_child, steps, args.threads, data)
        return 0

    torch.set_num_threads(args.threads)
    variants = ["plain", *[v for v in args.variants if v != "plain"]]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"lightning_tips overhead benchmark — torch {torch.__version__}, lightning {pl.__version__}, "
          f"device {device}, {args.threads} torch threads, {os.cpu_count()} CPUs")
    print(f"small CNN 1x28x28 (105k parameters), batch 64, Adam, {args.epoch_steps} steps per epoch; {steps} "
          f"steps per fit, timed window [{warmup}, {warmup + args.window}); {args.repeats} interleaved repeats")
    run_variant("plain", 30, data, seed=0)  # warm the process: imports, allocator, kernels

    times: dict[str, list[StepTimes]] = {v: [] for v in variants}
    preflight: dict[str, list[float]] = {v: [] for v in variants}
    card: dict[str, list[float]] = {v: [] for v in variants}
    t0 = time.perf_counter()
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            first, last = run_variant(v, steps, data, seed=r)
            times[v].append(timing(first, warmup, args.window))
            preflight[v].append(last.train_started - first.train_start)
            card[v].append(last.card_s)
        print(f"  repeat {r + 1}/{args.repeats} (amortized x plain): " + ", ".join(
            f"{v} {times[v][-1].mean / times['plain'][-1].mean:.3f}" for v in variants), flush=True)
    plain = times["plain"]
    w = plain[0]
    print(f"plain: {1000 * statistics.median(t.ordinary for t in plain):.2f} ms per ordinary step (median over "
          f"repeats); the window holds {w.n_sampled} sampled steps and {w.n_epoch_ends} epoch ends; "
          f"timing took {time.perf_counter() - t0:.0f} s")

    memory = {v: ({} if args.no_memory else measure_memory(v, EVERY_N + 11, args.threads, args.epoch_steps))
              for v in variants}

    def ratios(v: str, f: Callable[[StepTimes], float]) -> list[float]:
        return [f(t) / f(p) for t, p in zip(times[v], plain)]

    def extra_ms(v: str, f: Callable[[StepTimes], float]) -> list[float]:
        return [1000 * (f(t) - f(p)) for t, p in zip(times[v], plain)]

    real = args.real_epoch_steps
    cols = ["variant", "window x plain", "IQR", "ordinary x plain", "IQR", "sampled +ms", "epoch end +ms",
            f"modeled x plain ({real}/ep)", "train start s", "card s", "peak RSS +MiB", "py peak MiB"]
    if torch.cuda.is_available():
        cols.append("CUDA MiB")
    rows = []
    for v in variants:
        mem = memory[v]
        row = [
            v, *_iqr(ratios(v, lambda t: t.mean)), *_iqr(ratios(v, lambda t: t.ordinary)),
            _iqr(extra_ms(v, lambda t: t.sampled_extra), "{:.1f}")[0],
            _iqr(extra_ms(v, lambda t: t.epoch_extra), "{:.1f}")[0],
            _iqr(ratios(v, lambda t: t.modeled(EVERY_N, real)))[0],
            f"{statistics.median(preflight[v]):.2f}",
            f"{statistics.median(card[v]):.2f}",
            f"{mem['rss_mib']:.1f}" if "rss_mib" in mem else "-",
            f"{mem['py_peak_mib']:.1f}" if "py_peak_mib" in mem else "-",
        ]
        if torch.cuda.is_available():
            row.append(f"{mem.get('cuda_mib') or 0:.1f}")
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print()
    print("  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in enumerate(zip(cols, widths))))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for r in rows:
        print("  ".join(x.rjust(wd) if i else x.ljust(wd) for i, (x, wd) in enumerate(zip(r, widths))))
    print()
    for v in variants:
        print(f"  {v:<16} {DESCRIPTION[v]}")
        if "error" in memory[v]:
            print(f"  {'':<16} memory run failed: {memory[v]['error']}")
    print(f"""  window x plain: mean step time over the timed window (sampled steps and epoch ends in it), paired with
    plain's of the same repeat; median and IQR over repeats. ordinary: the median step (neither sampled nor
    epoch end). sampled / epoch end +ms: extra milliseconds of one sampled step / one epoch end over an
    ordinary step, minus plain's. modeled: ordinary + sampled/{EVERY_N} + epoch end/{real} (an MNIST-sized epoch).
  train start s: on_train_start of a probe after the callbacks minus one before them (the pre-flight, the
    views' first pictures); card s: the pre-flight card's checks alone.
  peak RSS +MiB: peak resident set during the fit of {EVERY_N + 11} steps in a fresh process minus the resident
    set before it (VmHWM reset at fit start); py peak: tracemalloc peak during that fit (Python heap only:
    tensor storage is not counted).""")

    failures: list[str] = []
    if "recipe" in variants:
        rec = statistics.median(ratios("recipe", lambda t: t.mean))
        model = statistics.median(ratios("recipe", lambda t: t.modeled(EVERY_N, real)))
        pre = statistics.median(preflight["recipe"])  # the whole on_train_start: pre-flight and first pictures
        print()
        print(f"target: Recipe <= 1.02x plain: window {rec:.3f} ({args.epoch_steps}-step epochs), modeled {model:.3f} "
              f"({real}-step epochs) -> {'ok' if rec <= 1.02 else ('ok at MNIST scale' if model <= 1.02 else 'MISSED')}")
        print(f"target: pre-flight <= 3 s: {pre:.2f} s -> {'ok' if pre <= 3.0 else 'MISSED'}")
        if "watch_all" in variants:
            wa = statistics.median(ratios("watch_all", lambda t: t.mean))
            print(f'target: Recipe cheaper than watch(log="all", log_freq={EVERY_N}) ({wa:.3f}): '
                  f"{'ok' if rec < wa else 'MISSED'}")
    if torch.cuda.is_available():
        print()
        print("CUDA syncs on unsampled steps (set_sync_debug_mode('warn')):")
        counts = sync_check(data, steps=2 * EVERY_N + 5)
        for v, c in counts.items():
            print(f"  {v:<16} {c}")
        if counts["recipe"] > counts["plain"]:
            failures.append("Recipe() at defaults synced on unsampled steps")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

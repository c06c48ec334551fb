"""The base callback and the composite: summary ownership, hook forwarding, state per child."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_tips import TipWarning
from lightning_tips._callback import TipComposite
from tests.helpers.data import DigitsDataModule
from tests.helpers.models import Classifier, small_cnn
from tests.helpers.reporting import Scripted


class Counting(Callback):
    def __init__(self) -> None:
        self.batches = 0
        self.calls: list[str] = []

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.calls.append("setup:fit" if stage == "fit" else "setup:other")

    def on_train_batch_end(self, *args: Any) -> None:
        self.batches += 1

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.calls.append("fit_end")

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.calls.append("teardown")

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = state_dict["batches"]


def test_summary_is_printed_once_by_the_first_tip_callback(make_trainer: Any, capsys: pytest.CaptureFixture[str]) -> None:
    a = Scripted({0: [("no-seed", "info", "no seed", {})]})
    b = Scripted({1: [("dead-activation", "warning", "half dead", {})]})
    with pytest.warns(TipWarning):
        make_trainer(callbacks=[a, b], limit_train_batches=3, limit_val_batches=0).fit(
            Classifier(small_cnn()), DigitsDataModule()
        )
    out = capsys.readouterr().out
    assert out.count("lightning_tips: 2 finding(s)") == 1
    # errors/warnings first
    assert out.index("dead-activation") < out.index("no-seed")


def test_summary_says_when_there_is_nothing(make_trainer: Any, capsys: pytest.CaptureFixture[str]) -> None:
    make_trainer(callbacks=[Scripted({})], limit_train_batches=2, limit_val_batches=0).fit(
        Classifier(small_cnn()), DigitsDataModule()
    )
    assert "lightning_tips: 0 finding(s) — nothing to report." in capsys.readouterr().out


def test_composite_forwards_hooks_collects_findings_and_saves_state_per_child(make_trainer: Any, tmp_path: Any,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    counting = Counting()
    scripted = Scripted({1: [("init-loss", "warning", "too high", {"loss": 9.0})]})
    comp = TipComposite([counting, scripted])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.warns(TipWarning):
        make_trainer(callbacks=[comp, ckpt], limit_train_batches=4, limit_val_batches=0,
                     enable_checkpointing=True).fit(Classifier(small_cnn()), DigitsDataModule())
    assert counting.batches == 4 and counting.calls == ["setup:fit", "fit_end", "teardown"]
    assert [f.code for f in comp.findings] == ["init-loss"]
    assert comp.child(Counting) is counting
    assert "lightning_tips: 1 finding(s)" in capsys.readouterr().out
    # resume: state of each child comes back; the finding is not reported again
    counting2, scripted2 = Counting(), Scripted({1: [("init-loss", "warning", "too high", {"loss": 9.0})]})
    comp2 = TipComposite([counting2, scripted2])
    trainer = make_trainer(callbacks=[comp2], limit_train_batches=4, limit_val_batches=0, max_epochs=2)
    trainer.fit(Classifier(small_cnn()), DigitsDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert counting2.batches == 8
    assert [f.code for f in scripted2.findings] == ["init-loss"]


def test_composite_only_calls_children_that_implement_a_hook() -> None:
    comp = TipComposite([Counting(), Callback()])
    assert len(comp._by_hook["on_train_batch_end"]) == 1 and len(comp._by_hook["on_before_backward"]) == 0
    assert torch.nn.Module is not None


def test_composite_checkpoints_the_shared_findings_once() -> None:
    inner = Scripted({})
    comp = TipComposite([inner, TipComposite([Scripted({1: []})])])
    comp._findings_log.admit(__import__("lightning_tips").Finding("no-seed", "info", "x"))
    state = comp.state_dict()
    assert len(state["findings"]) == 1
    assert all("findings" not in child for child in state["children"].values())
    restored = TipComposite([Scripted({}), TipComposite([Scripted({1: []})])])
    restored.load_state_dict(state)
    assert [f.code for f in restored.findings] == ["no-seed"]


def test_tables_fit_an_80_column_terminal_with_and_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_tips._console import render_table

    pytest.importorskip("rich")
    rows = [["not-learning", "warning", "", 3, "net.0", "overfit one batch: loss 2.3 -> 2.2 in 50 steps " * 3,
             "check the loss, the labels and the optimizer wiring (P10)"]]
    cols = ["code", "severity", "skipped", "step", "where", "message", "advice"]
    monkeypatch.setenv("COLUMNS", "80")
    with_rich = render_table("summary", cols, rows, color=False)
    assert max(len(line) for line in with_rich.splitlines()) <= 80, with_rich
    monkeypatch.setitem(sys.modules, "rich", None)  # rich not installed: `import rich` raises ImportError
    plain = render_table("summary", cols, rows, color=False)
    assert plain != with_rich and plain.splitlines()[0] == "summary"
    assert max(len(line) for line in plain.splitlines()) <= 80, plain
    assert "overfit" in plain and "(P10)" in plain
    monkeypatch.setenv("COLUMNS", "200")
    assert len(render_table("summary", cols, rows, color=False).splitlines()) < len(plain.splitlines())


def test_rich_tables_print_brackets_as_text() -> None:
    """A demoted finding reads "consequence of [nonfinite-loss]: …": rich took "[nonfinite-loss]" for markup and
    printed "consequence of : …"."""
    from lightning_tips._console import render_table

    pytest.importorskip("rich")
    rows = [["dead-activation", "info", "consequence of [unnormalized-input]: 56% of [bold]net.1[/bold] dead"]]
    out = render_table("summary [fit]", ["code", "severity", "message"], rows, color=False, width=200)
    assert "consequence of [unnormalized-input]: 56% of [bold]net.1[/bold] dead" in out and "summary [fit]" in out


def test_without_rich_the_fit_prints_plain_tables(
        make_trainer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import lightning_tips as lt
    from tests.helpers.models import Classifier, small_cnn
    from tests.helpers.preflight_models import digits_loader

    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setenv("COLUMNS", "80")
    trainer = make_trainer(limit_train_batches=2, limit_val_batches=0, enable_progress_bar=True,
                           callbacks=[lt.Recipe(gradients=False, activations=False)])
    trainer.fit(Classifier(small_cnn()), train_dataloaders=digits_loader())
    out = capsys.readouterr().out
    assert "lightning_tips pre-flight" in out and "| missing bias" in out
    card = out.split("lightning_tips pre-flight")[1].split("\n\n")[0]
    assert max(len(line) for line in card.splitlines()) <= 80

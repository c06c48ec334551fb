"""The `lightning-tips` console script."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from lightning_tips.cli import main
from lightning_tips.findings import CODES


def test_codes_lists_every_code_with_its_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(CODES)
    for line, info in zip(lines, CODES.values()):
        assert line.split()[0] == info.code and info.title in line


def test_explain_prints_the_full_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "batch-mixing"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("batch-mixing (check): sample i's output depends on sample j's input")
    assert "Tips: R2.12, P12" in out and "Thresholds:" in out


def test_explain_unknown_code_fails_with_the_known_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "nan"]) == 2
    err = capsys.readouterr().err
    assert "Unknown finding code 'nan'" in err and "nonfinite-loss" in err


def test_console_script_is_installed() -> None:
    exe = shutil.which("lightning-tips") or shutil.which("lightning-tips", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "pip install -e . installs the `lightning-tips` console script"
    out = subprocess.run([exe, "explain", "lr-decay"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("lr-decay (check)")


def test_explain_accepts_a_tip_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "R2.4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("R2.4 (check): Check the loss at initialisation") and "Codes: init-loss" in out
    assert main(["explain", "t11"]) == 0 and "Callbacks: WeightInit" in capsys.readouterr().out
    assert main(["explain", "R2.99"]) == 2
    assert "Or a tip id: R1, R2.1" in capsys.readouterr().err


def test_tips_lists_every_tip(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_tips.tips import TIPS

    assert main(["tips"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(TIPS)
    assert main(["tips", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| tip | advice |")


def test_the_command_imports_neither_lightning_nor_torch() -> None:
    """`lightning-tips codes` took ~9 s because it imported Lightning; the registries are pure data."""
    code = ("import sys; from lightning_tips.cli import main; main(['codes']); "
            "print(sorted(m for m in ('lightning', 'torch', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"

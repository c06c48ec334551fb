"""The README stays true: its codes table is the registry, its commands are what CI runs, and it
names every public callback."""

from __future__ import annotations

import re
from pathlib import Path

from lightning.pytorch.callbacks import Callback

import lightning_tips as lt
from lightning_tips.cli import codes_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_codes_table_is_generated_from_the_registry() -> None:
    section = README.split("<!-- codes:start -->\n")[1].split("<!-- codes:end -->")[0]
    assert section.strip() == codes_markdown().strip(), "regenerate with `lightning-tips codes --markdown`"


def test_ci_runs_the_readme_setup_and_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    setup, main_job, tests = blocks[0].strip(), blocks[1].strip(), blocks[2].strip()
    assert "pip install torch==2.13.0" in setup and 'pip install -e ".[dev]"' in setup
    assert main_job == "python examples/quickstart.py"
    assert tests == "python -m pytest -q"
    assert "pip install -q torch==2.13.0" in ci and 'pip install -q -e ".[dev]"' in ci
    assert ci.strip().splitlines()[-1] == tests


def test_every_public_callback_is_in_the_readme_table() -> None:
    callbacks = [n for n in lt.__all__ if isinstance(getattr(lt, n), type) and issubclass(getattr(lt, n), Callback)
                 and n not in ("TipCallback", "TipComposite")]
    assert len(callbacks) >= 15
    for name in callbacks:
        assert f"`{name}`" in README, name


def test_changelog_keeps_a_changelog_form() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog") and "## [Unreleased]" in text and "### Added" in text

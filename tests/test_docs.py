"""The README stays true: its codes table is the registry, its commands are what CI runs, and it
names every public callback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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


def test_tips_table_is_generated_from_the_tips_data() -> None:
    from lightning_tips.tips import tips_markdown

    section = README.split("<!-- tips:start -->\n")[1].split("<!-- tips:end -->")[0]
    assert section.strip() == tips_markdown().strip(), "regenerate with `lightning-tips tips --markdown`"
    assert "](#where-the-advice-comes-from)" in README  # the link in the intro points at the table's section


def test_every_tip_id_a_finding_cites_is_in_the_tips_data() -> None:
    from lightning_tips.findings import CODES
    from lightning_tips.tips import TIPS, tip

    ids = {t.id for t in TIPS}
    for info in CODES.values():
        assert set(info.tips) <= ids, (info.code, set(info.tips) - ids)
    for t in TIPS:
        assert t.advice and t.kind and tip(t.id.lower()) is t
        assert all(isinstance(getattr(lt, cb), type) for cb in t.callbacks), t


def test_the_printed_warning_filter_command_works_as_printed(tmp_path: Path) -> None:
    """README: `python -W "ignore:::lightning_tips" examples/quickstart.py` silences every finding."""
    import os
    import shlex
    import subprocess
    import sys

    (line,) = [ln for ln in README.splitlines() if ln.startswith('python -W "ignore:::lightning_tips"')]
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-W", "ignore:::lightning_tips"]
    script = tmp_path / "warn.py"  # the same flag, on a script that reports one finding (a fit takes minutes)
    script.write_text("import lightning_tips as lt\nlt.report(lt.Finding('no-seed', 'info', 'no seed'))\n"
                      "print('ran')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for flags, expect_warning in ((argv[1:3], False), ([], True)):
        proc = subprocess.run([sys.executable, *flags, str(script)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "ran", proc.stderr
        assert ("[no-seed] info: no seed" in proc.stderr) is expect_warning, proc.stderr
        assert "Invalid -W option" not in proc.stderr


def test_pyproject_uses_the_spdx_license_and_keeps_rich_optional() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"  # PEP 639 string, not the deprecated table
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in meta["build-system"]["requires"])
    assert not [d for d in meta["project"]["dependencies"] if d.startswith("rich")]
    assert meta["project"]["optional-dependencies"]["rich"] == ["rich>=13"]


def _cli_lines() -> list[str]:
    section = README.split("## LightningCLI")[1].split("\n## ")[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    return [ln for ln in block.strip().splitlines() if ln.startswith("python examples/cli.py")]


def test_every_readme_cli_command_has_an_epoch_limit() -> None:
    lines = _cli_lines()
    assert len(lines) == 3
    for line in lines:  # Lightning's default is 1000 epochs
        assert "--config" in line or "--trainer.max_epochs=" in line, line


@pytest.mark.slow
def test_readme_cli_command_runs_exactly_as_printed(tmp_path: Path) -> None:
    import os
    import shlex
    import subprocess
    import sys

    argv = shlex.split(_cli_lines()[1])
    assert argv[0] == "python"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lightning_tips pre-flight" in proc.stdout and "max_epochs=2` reached" in proc.stdout + proc.stderr

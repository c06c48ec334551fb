"""LightningCLI over the digits example (examples/cli.py, examples/config.yaml) and the W&B sweep
configs that drive it (T1, R5.1, R5.2, T3).

Each subprocess costs ~5 s (imports), so they are few: the YAML config fit, the ``+=`` flags fit,
``--print_config`` and its round trip, and one sweep trial. Building every public callback from a
``class_path`` dict, and the sweep's flag names, are checked in-process through jsonargparse.
"""

from __future__ import annotations

import inspect
import math
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.callbacks import Callback

import lightning_tips as lt
from tests.helpers.subproc import REPO, run_python

jsonargparse = pytest.importorskip("jsonargparse")

CLI = str(REPO / "examples" / "cli.py")
CONFIG = str(REPO / "examples" / "config.yaml")
SWEEPS = [REPO / "examples" / "wandb_sweep.yaml", REPO / "examples" / "wandb_sweep_bayes.yaml"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2"]


def _load_cli() -> Any:
    """examples/cli.py as a module (examples/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lt_examples_cli", REPO / "examples" / "cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ok(proc: Any) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def _saved_config(root: Path) -> dict[str, Any]:
    """The config.yaml LightningCLI saved for the run (one per test: runs are in tmp_path)."""
    found = sorted(root.rglob("config.yaml"))
    assert found, f"no config.yaml saved under {root}"
    return yaml.safe_load(found[0].read_text())


# --- subprocess runs ------------------------------------------------------------------------------
def test_fit_with_the_yaml_config_trains_and_prints_the_card(tmp_path: Path) -> None:
    """``fit --config examples/config.yaml``: the Recipe and two fixes from YAML, TensorBoard logs."""
    out = _ok(run_python([CLI, "fit", "--config", CONFIG, *SHORT, *QUIET], timeout=120, cwd=tmp_path))
    assert "lightning_tips pre-flight" in out  # the report card
    assert "lightning_tips: " in out and "finding(s)" in out  # the end-of-fit summary
    assert "[output-bias] info: set the bias of `head`" in out  # fix 1: OutputBiasInit ran
    assert "EarlyStopping: restored the best weights" in out  # fix 2: lt.EarlyStopping ran
    assert "max_epochs=1` reached" in out
    # the logger dir is relative to the working directory: the run stayed in tmp_path
    events = list((tmp_path / "tips_runs" / "cli").rglob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in tmp_path.rglob("*"))
    saved = _saved_config(tmp_path / "tips_runs" / "cli")
    assert [c["class_path"] for c in saved["trainer"]["callbacks"]] == [
        "lightning_tips.OutputBiasInit", "lightning_tips.Recipe", "lightning_tips.EarlyStopping",
    ]
    recipe = saved["trainer"]["callbacks"][1]["init_args"]
    assert recipe["every_n_steps"] == 20 and recipe["view_every_n_steps"] == 40
    # T1: the hyper-parameters are in one place, and logged with the run
    hparams = yaml.safe_load(next((tmp_path / "tips_runs" / "cli").rglob("hparams.yaml")).read_text())
    assert hparams["lr"] == pytest.approx(0.003)


def test_callbacks_from_flags_without_a_config(tmp_path: Path) -> None:
    """``--trainer.callbacks+=lightning_tips.X --trainer.callbacks.arg=v``: each ``.arg`` lands on
    the callback added just before it."""
    args = [
        CLI, "fit", f"--trainer.default_root_dir={tmp_path}", *SHORT, *QUIET,
        "--trainer.callbacks+=lightning_tips.Recipe", "--trainer.callbacks.every_n_steps=5",
        "--trainer.callbacks+=lightning_tips.ActivationStats", "--trainer.callbacks.every_n_steps=50",
    ]
    out = _ok(run_python(args, timeout=120, cwd=tmp_path))
    assert "lightning_tips pre-flight" in out and "finding(s)" in out
    callbacks = _saved_config(tmp_path)["trainer"]["callbacks"]
    assert [(c["class_path"], c["init_args"]["every_n_steps"]) for c in callbacks] == [
        ("lightning_tips.Recipe", 5), ("lightning_tips.ActivationStats", 50),
    ]


def test_print_config_round_trips(tmp_path: Path) -> None:
    """``--print_config`` of a run with the Recipe and a fix, saved, runs as ``--config``."""
    printed = run_python(
        [CLI, "fit", "--trainer.callbacks+=lightning_tips.Recipe", "--trainer.callbacks.every_n_steps=7",
         "--trainer.callbacks.nonfinite_action=skip",
         "--trainer.callbacks+=lightning_tips.GradientClipping", "--trainer.callbacks.max_norm=0.5",
         "--model.lr=0.001", "--print_config"],
        timeout=120, cwd=tmp_path,
    )
    _ok(printed)
    config = yaml.safe_load(printed.stdout)
    recipe, clip = config["trainer"]["callbacks"]
    assert recipe["class_path"] == "lightning_tips.Recipe"
    assert recipe["init_args"]["every_n_steps"] == 7 and recipe["init_args"]["nonfinite_action"] == "skip"
    assert recipe["init_args"]["view_every_n_steps"] == 1000  # the defaults are spelled out too
    assert clip == {"class_path": "lightning_tips.GradientClipping",
                    "init_args": {**clip["init_args"], "max_norm": 0.5, "mode": "norm"}}
    assert config["model"]["lr"] == 0.001
    saved = tmp_path / "saved.yaml"
    saved.write_text(printed.stdout)
    out = _ok(run_python([CLI, "fit", "--config", str(saved), "--trainer.fast_dev_run=true", *QUIET],
                         timeout=120, cwd=tmp_path))
    assert "lightning_tips pre-flight" in out and "finding(s)" in out


def _sweep_command(sweep: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The trial's command line as the W&B agent builds it (``${args}`` -> ``--name=value``)."""
    try:  # the agent's own formatting, where this wandb has it
        from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

        flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args"]
    except ImportError:  # pragma: no cover
        flags = [f"--{k}={v}" for k, v in values.items()]
    macros = {"${env}": [], "${interpreter}": ["python"], "${program}": [sweep["program"]], "${args}": flags}
    command: list[str] = []
    for part in sweep["command"]:
        command += macros.get(part, [part])
    return command


def _sample(spec: dict[str, Any], rng: random.Random) -> Any:
    if "values" in spec:
        return rng.choice(spec["values"])
    assert spec["distribution"] == "log_uniform_values"
    return math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_config_is_valid_for_the_cli(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep YAML parses, names CLI flags, and samples positive log-uniform ranges (T3)."""
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "examples/cli.py" and (REPO / sweep["program"]).is_file()
    assert sweep["method"] == ("bayes" if "bayes" in path.name else "random")
    assert sweep["metric"] == {"name": "val_loss", "goal": "minimize"}
    assert sweep["command"][:3] == ["${env}", "python", "${program}"] and sweep["command"][-1] == "${args}"
    params = sweep["parameters"]
    assert {"model.lr", "model.weight_decay", "data.batch_size"} <= set(params)
    for name, spec in params.items():
        if spec.get("distribution") == "log_uniform_values":
            assert 0 < spec["min"] < spec["max"], name
    assert params["model.lr"]["distribution"] == "log_uniform_values"
    assert params["model.weight_decay"]["distribution"] == "log_uniform_values"
    # every parameter is a flag of examples/cli.py: parse one sampled trial with the CLI's own parser
    from lightning.pytorch.cli import LightningCLI

    cli_module = _load_cli()
    rng = random.Random(0)
    values = {name: _sample(spec, rng) for name, spec in params.items()}
    command = _sweep_command(sweep, values)
    assert command[:2] == ["python", "examples/cli.py"]
    fit_args = command[command.index("fit") + 1:]
    fit_args = [str(REPO / a) if a == "examples/config.yaml" else a for a in fit_args]
    cli = LightningCLI(cli_module.DigitsCNN, cli_module.DigitsData, run=False, args=fit_args,
                       trainer_defaults={"logger": False})
    assert cli.model.hparams.lr == pytest.approx(values["model.lr"])
    assert cli.model.hparams.weight_decay == pytest.approx(values["model.weight_decay"])
    assert cli.datamodule.batch_size == values["data.batch_size"]
    assert type(cli.trainer.logger).__name__ == "WandbLogger"  # the trial logs val_loss to the sweep's run
    # a typo in a parameter name is what this guards against: the CLI rejects unknown flags
    with pytest.raises(SystemExit):
        LightningCLI(cli_module.DigitsCNN, cli_module.DigitsData, run=False,
                     args=["--model.learning_rate=0.1"], parser_kwargs={"exit_on_error": True})


def test_one_sweep_trial_runs(tmp_path: Path) -> None:
    """One trial's command line, as the agent would run it, with sampled values and fast_dev_run."""
    sweep = yaml.safe_load(SWEEPS[0].read_text())
    rng = random.Random(1)
    values = {name: _sample(spec, rng) for name, spec in sweep["parameters"].items()}
    command = _sweep_command(sweep, values)
    assert f"--model.lr={values['model.lr']}" in command
    args = [str(REPO / a) if a in ("examples/cli.py", "examples/config.yaml") else a for a in command[1:]]
    out = _ok(run_python([*args, "--trainer.fast_dev_run=true", *QUIET], timeout=120, cwd=tmp_path,
                         WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_CACHE_DIR=str(tmp_path),
                         WANDB_CONFIG_DIR=str(tmp_path), WANDB_DATA_DIR=str(tmp_path)))
    assert "lightning_tips pre-flight" in out and "finding(s)" in out


# --- in-process: every public callback from a class_path dict ---------------------------------------
NON_DEFAULT: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (init_args, attributes expected on the instance; "children" checks the composite's parts)
    "ActivationStats": ({"every_n_steps": 7, "dead_fraction": 0.8, "log_histograms": False},
                        {"every_n_steps": 7, "dead_fraction": 0.8, "log_histograms": False}),
    "BatchMixingCheck": ({"budget_s": 1.5}, {"budget_s": 1.5}),
    "DataChecks": ({"max_batches": 3, "first_batch": False}, {"max_batches": 3, "first_batch": False}),
    "EarlyStopping": ({"monitor": "val_acc", "mode": "max", "patience": 5, "restore_best_weights": False},
                      {"monitor": "val_acc", "mode": "max", "patience": 5, "restore_best_weights": False}),
    "FirstBatchView": ({"input_key": "pixels", "target_key": "cls"}, {"input_key": "pixels", "target_key": "cls"}),
    "FirstLayerFilters": ({"every_n_steps": 7, "colormap": "gray"}, {"every_n_steps": 7, "colormap": "gray"}),
    "FixedBatchPredictions": ({"every_n_steps": 7, "num_samples": 4}, {"every_n_steps": 7, "num_samples": 4}),
    "ForgetGateBias": ({"value": 2.0}, {"value": 2.0}),
    "GradientClipping": ({"mode": "value", "max_norm": 0.5, "every_n_steps": 7},
                         {"mode": "value", "max_norm": 0.5, "every_n_steps": 7}),
    "GradientStats": ({"every_n_steps": 7, "log_histograms": True}, {"every_n_steps": 7, "log_histograms": True}),
    "InitialLossCheck": ({"budget_s": 1.5}, {"budget_s": 1.5}),
    "InputIndependenceCheck": ({"steps": 7}, {"steps": 7}),
    "LRDecayGuard": ({"every_n_steps": 7, "floor": 0.01}, {"every_n_steps": 7, "floor": 0.01}),
    "LearningCurves": ({"patience": 7, "val_loss_key": "valid/loss"}, {"patience": 7, "val_loss_key": "valid/loss"}),
    "MissingBiasCheck": ({"budget_s": 1.5}, {"budget_s": 1.5}),
    "NonFiniteGuard": ({"action": "warn", "every_n_steps": 7}, {"action": "warn", "every_n_steps": 7}),
    "OutputActivationCheck": ({"budget_s": 1.5}, {"budget_s": 1.5}),
    "OutputBiasInit": ({"task": "binary", "prior": [0.25], "layer": "head"},
                       {"task": "binary", "prior": [0.25], "layer": "head"}),
    "OverfitBatchCheck": ({"steps": 7, "max_batch": 8}, {"steps": 7, "max_batch": 8}),
    "Preflight": ({"overfit_batch": False, "missing_bias": False, "budget_s": 1.5},
                  {"budget_s": 1.5, "children": ["DataChecks", "InitialLossCheck", "OutputActivationCheck",
                                                 "BatchMixingCheck", "InputIndependenceCheck", "FirstBatchView"]}),
    "Recipe": ({"every_n_steps": 7, "nonfinite_action": "skip", "weight_init": "he", "gradient_clip": 0.5,
                "activations": False},
               {"children": ["WeightInit", "Preflight", "NonFiniteGuard", "GradientStats", "GradientClipping",
                             "LRDecayGuard", "LearningCurves", "FixedBatchPredictions", "FirstLayerFilters"]}),
    "SnapshotEnsemble": ({"k": 5, "on_disk": True}, {"k": 5, "on_disk": True}),
    "TipCallback": ({}, {}),
    "TipComposite": ({"children": [{"class_path": "lightning_tips.NonFiniteGuard", "init_args": {"action": "warn"}}]},
                     {"children": ["NonFiniteGuard"]}),
    "WeightInit": ({"scheme": "orthogonal"}, {"scheme": "orthogonal"}),
}

PUBLIC_CALLBACKS = sorted(
    name for name in lt.__all__ if inspect.isclass(getattr(lt, name)) and issubclass(getattr(lt, name), Callback)
)


def _parser() -> Any:
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--cb", type=Callback)
    return parser


def _build(parser: Any, name: str, init_args: dict[str, Any]) -> Any:
    cfg = parser.parse_object({"cb": {"class_path": f"lightning_tips.{name}", "init_args": init_args}})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(cfg).cb


def test_every_public_callback_is_covered() -> None:
    assert set(PUBLIC_CALLBACKS) == set(NON_DEFAULT), "a new public callback needs a row in NON_DEFAULT"


@pytest.mark.parametrize("name", PUBLIC_CALLBACKS)
def test_callback_builds_from_class_path(name: str) -> None:
    """jsonargparse builds ``lightning_tips.<name>`` from its type hints, non-default args landing."""
    init_args, expected = NON_DEFAULT[name]
    cb = _build(_parser(), name, init_args)
    assert type(cb) is getattr(lt, name)
    for attr, value in expected.items():
        if attr == "children":
            assert [type(c).__name__ for c in cb.children] == value
        else:
            assert getattr(cb, attr) == value, attr
    if name == "Recipe":  # the shared every_n_steps reached the sampled children
        assert {c.every_n_steps for c in cb.children if type(c).__name__ in ("GradientStats", "LRDecayGuard")} == {7}
        assert next(c for c in cb.children if type(c).__name__ == "NonFiniteGuard").action == "skip"


@pytest.mark.parametrize(
    ("name", "init_args", "key"),
    [
        ("Recipe", {"every_n_steps": "x"}, "every_n_steps"),
        ("Recipe", {"nonfinite_action": "explode"}, "nonfinite_action"),
        ("Recipe", {"weight_init": "kaiming"}, "weight_init"),
        ("Recipe", {"every_n_stepz": 5}, "every_n_stepz"),
        ("ActivationStats", {"every_n_steps": 2.5}, "every_n_steps"),
        ("NonFiniteGuard", {"action": "explode"}, "action"),
        ("EarlyStopping", {"mode": "up"}, "mode"),
        ("WeightInit", {"scheme": "zeros"}, "scheme"),
        ("OutputBiasInit", {"task": "ranking"}, "task"),
    ],
)
def test_bad_typed_arg_is_rejected_before_training(name: str, init_args: dict[str, Any], key: str) -> None:
    with pytest.raises(jsonargparse.ArgumentError) as err:
        _build(_parser(), name, init_args)
    message = str(err.value)
    assert f"lightning_tips.{name}" in message and key in message, message


def test_out_of_range_value_fails_with_the_constructors_message() -> None:
    """Well-typed but invalid: the callback's own ``ValueError`` ("Expected ... but got ...")."""
    with pytest.raises(ValueError, match=r"Expected every_n_steps to be an int >= 0 but got -1"):
        _build(_parser(), "Recipe", {"every_n_steps": -1})


def test_lightning_cli_builds_callbacks_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through ``LightningCLI(run=False)``: YAML-style callbacks plus a ``+=`` flag."""
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    from lightning.pytorch.cli import LightningCLI

    cli_module = _load_cli()
    cli = cli_module.main(
        args=["--config", CONFIG, "--trainer.logger=false",
              "--trainer.callbacks+=lightning_tips.GradientStats", "--trainer.callbacks.every_n_steps=9"],
        run=False,
    )
    assert isinstance(cli, LightningCLI)
    tips = [c for c in cli.trainer.callbacks if type(c).__module__.startswith("lightning_tips")]
    assert [type(c).__name__ for c in tips] == ["OutputBiasInit", "Recipe", "EarlyStopping", "GradientStats"]
    assert tips[-1].every_n_steps == 9
    recipe = tips[1]
    assert next(c for c in recipe.children if type(c).__name__ == "ActivationStats").every_n_steps == 20

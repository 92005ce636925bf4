"""The command line's surface: every command that prints a result takes --json and prints
one JSON document on stdout; every command is one call of the public Python API; `serve`
takes --host/--port; the run summary's columns line up whatever a step is called.

Cheap tests (no Ray, no registry) in the default run; the ones that register models on a
real MLflow SQLite store are marked long.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pandas as pd
import pytest
from click.testing import CliRunner

import raymlops
from raymlops.cli.base import _load
from raymlops.cli.main import cli
from raymlops.cli.serve import _endpoint_overrides
from raymlops.core.report import aligned
from raymlops.loop.pipeline import RunResult
from raymlops.registry.store import Registry
from tests.unit.test_governance import (  # noqa: F401  (fixtures)
    Trained,
    _isolated_env,
    register,
    registry,
    trained,
)

#: Commands whose output is a document in its own format, not a result: the effective
#: config and the Serve config (YAML), a job's log, a model card and the configuration
#: reference (Markdown/HTML).
DOCUMENTS = {"config show", "serve config", "jobs logs", "card", "config docs"}

#: Commands for developing raymlops itself, not steps of the lifecycle: no API call.
TOOLING = {"config docs"}  # regenerates README's configuration table

#: What each command calls: the public name (raymlops.__all__) that does its work.
API_OF_COMMAND = {
    "approve": "approve",
    "batch": "run_batch",
    "card": "card",
    "config show": "load_config",
    "config validate": "load_config",
    "data profile": "describe_path",
    "data synth": "synth_dataset",
    "gate": "gate",
    "jobs list": "JobLauncher",
    "jobs logs": "JobLauncher",
    "jobs stop": "JobLauncher",
    "log compact": "compact_prediction_log",
    "models history": "model_history",
    "models list": "Registry",
    "models show": "Registry",
    "models upgrade": "Registry",
    "monitor": "run_monitor",
    "predict": "load_predictor",
    "promote": "promote",
    "retrain": "retrain",
    "rollback": "rollback",
    "run": "run_pipeline",
    "serve": "serve_model",
    "serve canary": "serve_canary",
    "serve config": "serve_config_yaml",
    "serve promote": "serve_promote",
    "serve rollback": "serve_rollback",
    "serve status": "serve_statuses",
    "serve stop": "serve_stop",
    "submit": "JobLauncher",
    "train": "train_and_register",
    "watch": "watch",
}


def _commands(group: click.Group = cli, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command under `group` by its path (`serve canary`); a group that does work
    itself (`serve`) counts as a command too."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                yield path, command
            yield from _commands(command, path + " ")
        else:
            yield path, command


def _imported(callback: Callable[..., Any]) -> list[Any]:
    """The objects a command's function imports (`from raymlops… import x`), and those it
    uses from a module it imports (`from raymlops.loop import governance` … `governance.x`)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(callback))))
    found = []
    modules: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raymlops"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                found.append(getattr(module, alias.name))
                if inspect.ismodule(found[-1]):
                    modules[alias.asname or alias.name] = found[-1]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(getattr(modules[node.value.id], node.attr, None))
    return found


def test_every_command_that_prints_a_result_takes_json() -> None:
    without = [
        path
        for path, command in _commands()
        if path not in DOCUMENTS and "as_json" not in {p.name for p in command.params}
    ]
    assert without == []


def test_every_command_is_one_call_of_the_public_api() -> None:
    commands = {path: c for path, c in _commands() if path not in TOOLING}
    assert sorted(commands) == sorted(API_OF_COMMAND)  # a new command needs its API here
    for path, name in API_OF_COMMAND.items():
        assert name in raymlops.__all__, path
        api = getattr(raymlops, name)
        assert callable(api) and (api.__doc__ or "").strip(), name
        callback = commands[path].callback
        assert callback is not None
        if name == "load_config":  # through the CLI's shared `_load`
            assert "_load(" in inspect.getsource(inspect.unwrap(callback)), path
        else:
            assert any(obj is api for obj in _imported(callback)), f"{path} does not call {name}"


# --------------------------------------------------------------------------- --json output


def test_data_synth_and_config_validate_print_json_alone(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "rows.parquet"
    synth = runner.invoke(cli, ["data", "synth", "--rows", "50", "--out", str(out), "--json"])
    assert synth.exit_code == 0, synth.output
    document = json.loads(synth.stdout)  # nothing else on stdout
    assert (document["rows"], Path(document["path"]), document["task"]) == (
        50,
        out,
        "classification",
    )
    assert out.is_file()

    config = str(Path(raymlops.__file__).parent / "examples" / "breast_cancer.yaml")
    valid = runner.invoke(
        cli, ["config", "validate", config, "--set", "registry.model_name=m", "--json"]
    )
    assert valid.exit_code == 0, valid.output
    assert json.loads(valid.stdout) == {
        "file": config,
        "valid": True,
        "name": "breast-cancer",
        "model": "m",
    }
    invalid = runner.invoke(cli, ["config", "validate", config, "--set", "nope=1", "--json"])
    assert invalid.exit_code == 2, invalid.output
    verdict = json.loads(invalid.stdout)  # the verdict still, and nothing else, on stdout
    assert (verdict["file"], verdict["valid"]) == (config, False)
    assert "nope: unknown key" in verdict["error"]
    assert "nope: unknown key" in invalid.stderr


@pytest.mark.long  # registers models on a fresh store: ~10 s on 2 shared CPUs
def test_governance_results_as_json(
    registry: Registry,  # noqa: F811
    trained: Trained,  # noqa: F811
    tmp_path: Path,
) -> None:
    register(registry, trained, trained.good)
    runner = CliRunner()
    home = ["--home", str(tmp_path)]

    same = runner.invoke(cli, ["promote", "m", "1", "--reason", "r", "--json", *home])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout) == {
        "name": "m",
        "alias": "champion",
        "to_version": 1,
        "moved": False,
    }

    gated = runner.invoke(cli, ["gate", "m", "1", "--json", *home])
    assert gated.exit_code == 0, gated.output
    assert json.loads(gated.stdout)["status"] == "passed"
    approved = runner.invoke(cli, ["approve", "m", "1", "--by", "ann", "--json", *home])
    assert approved.exit_code == 0, approved.output
    event = json.loads(approved.stdout)
    assert (event["action"], event["by"], event["to_version"]) == ("approve", "ann", 1)
    assert event["approvals"] == ["ann"]


def test_run_result_renders_as_one_json_document() -> None:
    from raymlops.cli.run import _run_result_dict

    version = SimpleNamespace(version=3, aliases=["champion"])
    train = SimpleNamespace(
        model_name="m",
        version=version,
        run_id="r1",
        best_params={"lr": 0.01},
        test_metrics={"accuracy": 0.9},
        trials=4,
        failed_trials=0,
        dataset=SimpleNamespace(digest="abc"),
        tracking_uri="sqlite:///x/mlflow.db",
        first_gate=None,
    )
    predictions = pd.DataFrame({"prediction": ["1", "0"], "proba_1": [0.9, float("nan")]})
    result = RunResult(
        train=train,  # type: ignore[arg-type]  # the fields the document reads
        champion=3,
        sample_predictions=predictions,
        card_path=Path("/tmp/card.md"),
        steps=[("train", 1.5)],
        wall_time_s=2.0,
    )
    document = json.loads(json.dumps(_run_result_dict(result), default=str))
    assert document["train"]["version"] == 3 and document["champion"] == 3
    assert document["sampled_version"] == 3
    assert document["sample_predictions"] == [
        {"prediction": "1", "proba_1": 0.9},
        {"prediction": "0", "proba_1": None},  # NaN is JSON's null, not a bare NaN
    ]
    assert (document["gate"], document["batch"], document["card_path"]) == (
        None,
        None,
        "/tmp/card.md",
    )
    assert document["steps"] == [{"step": "train", "seconds": 1.5}]

    # A first version that failed its gate: the sample came from it, but it is not champion.
    train.first_gate = SimpleNamespace(passed=False, to_dict=lambda: {"status": "failed"})
    failed = json.loads(json.dumps(_run_result_dict(result), default=str))
    assert failed["champion"] is None and failed["sampled_version"] == 3
    assert failed["train"]["first_version_gate"] == {"status": "failed"}


def test_a_failed_gate_of_a_version_registered_with_no_champion_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`train` and `run --train-only` exit 1 on that failed verdict, as `gate` and
    `retrain` do, with one line saying the version stays registered, not champion."""
    from raymlops.cli.run import _exit_if_first_gate_failed

    check = SimpleNamespace(kind="threshold", name="accuracy")
    failed = SimpleNamespace(passed=False, failed_checks=[check])
    result = SimpleNamespace(model_name="m", version=SimpleNamespace(version=3), first_gate=failed)
    with pytest.raises(SystemExit) as exited:
        _exit_if_first_gate_failed(result)
    assert exited.value.code == 1
    assert (
        "error: m v3 failed its gate (threshold accuracy): it stays registered, not champion"
        in capsys.readouterr().err
    )
    for gate in (None, SimpleNamespace(passed=True, failed_checks=[])):
        _exit_if_first_gate_failed(SimpleNamespace(first_gate=gate))  # no exit
    shown = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "exits 1" in shown and "not champion" in shown


def test_json_output_has_no_bare_nan(capsys: pytest.CaptureFixture[str]) -> None:
    from raymlops.cli.base import _json_out

    _json_out({"auc": float("nan"), "rows": [1.0, float("inf")], "name": "m"})
    assert json.loads(capsys.readouterr().out) == {"auc": None, "rows": [1.0, None], "name": "m"}


# --------------------------------------------------------------------------- serve flags


def test_serve_host_and_port_flags() -> None:
    runner = CliRunner()
    shown = runner.invoke(cli, ["serve", "--help"])
    assert "--host" in shown.stdout and "--port" in shown.stdout
    assert "serve.port" in shown.stdout and "serve.host" in shown.stdout

    config = _load(None, _endpoint_overrides(("serve.port=1",), "0.0.0.0", 8123))
    assert (config.serve.host, config.serve.port) == ("0.0.0.0", 8123)  # the flags win
    config = _load(None, _endpoint_overrides((), None, None))
    assert (config.serve.host, config.serve.port) == ("127.0.0.1", 8000)

    # The flag reaches the config the exposure check reads, before anything starts.
    exposed = runner.invoke(cli, ["serve", "--host", "0.0.0.0"], env={"RAYMLOPS_SERVE_TOKEN": None})
    assert exposed.exit_code == 2
    assert "serve.host 0.0.0.0 exposes the endpoint" in exposed.stderr
    bad_port = runner.invoke(cli, ["serve", "--port", "70000"])
    assert bad_port.exit_code == 2 and "70000" in bad_port.stderr


# --------------------------------------------------------------------------- run summary


def test_aligned_columns_fit_the_longest_cell() -> None:
    rows = [("a", "1.0 s"), ("a much longer step name than thirty-four chars", "123.4 s")]
    lines = aligned(rows, right={1})
    assert lines == [
        "  a                                                1.0 s",
        "  a much longer step name than thirty-four chars 123.4 s",
    ]
    assert aligned([("key:", "value"), ("longer key:", "v")]) == [
        "  key:        value",
        "  longer key: v",
    ]
    assert aligned([]) == []


@pytest.mark.parametrize("longest", [5, 34, 35, 80])
def test_run_summary_columns_line_up_for_any_step_name(longest: int) -> None:
    steps = [("train", 12.0), ("x" * longest, 3.25), ("serve → traffic", 101.0)]
    train = SimpleNamespace(model_name="m", tracking_uri="sqlite:///x/mlflow.db")
    result = RunResult(
        train=train,  # type: ignore[arg-type]  # only its name and URI are shown
        champion=2,
        sample_predictions=None,  # type: ignore[arg-type]
        card_path=Path("/tmp/card.md"),
        report_path=Path("/tmp/drift.html"),
        wall_time_s=1234.5,
        steps=steps,
    )
    lines = result.summary().splitlines()
    timing = [line for line in lines if line.endswith(" s")]
    assert len(timing) == len(steps) + 1
    assert len({len(line) for line in timing}) == 1  # every time ends in one column
    starts = {
        line.index(word)
        for line, word in zip(timing, ["12.0", "3.2", "101.0", "1234.5"], strict=True)
    }
    assert len(starts) == 4  # right-aligned figures: different starts, one end
    names = [line for line in lines if ":" in line and not line.endswith(" s")]
    values = {
        line.index(text)
        for line, text in zip(names, ["m v2", "/tmp/card", "/tmp/drift", "mlflow"], strict=True)
    }
    assert len(values) == 1  # the values after the labels start in one column
    assert any(line.strip().startswith("x" * longest) for line in timing)


def test_a_failed_job_still_prints_its_json_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`submit --json` and `run --json` with a job address: the document first (the log
    tail on stderr), then the error line and exit 1."""
    from raymlops.cli.run import _exit_if_failed, _jobs_dict, _outcome_dict, _report_jobs
    from raymlops.cluster.launcher import JobOutcome

    ok = JobOutcome("train", "raymlops-train-1", "SUCCEEDED", 1)
    failed = JobOutcome("gate", "raymlops-gate-1", "FAILED", 2, log_tail="boom: no data")
    assert _report_jobs([ok], as_json=True) is None
    error = _report_jobs([ok, failed], as_json=True)
    assert error == "step gate failed as Ray job raymlops-gate-1"
    said = capsys.readouterr()
    assert said.out == "" and "boom: no data" in said.err  # stdout is the document's

    config = _load(None, ("registry.model_name=m",))
    unreadable = tmp_path / "home-is-a-file"
    unreadable.write_text("")  # no registry answers here: the champion is unknown
    document = _jobs_dict(config, str(unreadable), [ok, failed], error)
    assert document == {
        "model": "m",
        "champion": None,
        "jobs": [_outcome_dict(ok), _outcome_dict(failed)],
        "error": error,
    }
    with pytest.raises(SystemExit) as exited:
        _exit_if_failed(error)
    assert exited.value.code == 1
    _exit_if_failed(None)  # all succeeded: nothing happens

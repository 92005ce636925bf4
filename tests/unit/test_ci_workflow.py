"""The example CI workflow (examples/ci/model-ci.yml) is valid YAML whose steps call real
`raymlops` commands with options those commands have, in the order train → gate → promote,
and the config it uses validates."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import yaml

from raymlops.cli.main import cli
from raymlops.core.config import load_config

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "ci" / "model-ci.yml"


def _workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def _invocations(script: str) -> list[list[str]]:
    """Every `raymlops …` command line in a step's script (up to a redirect or pipe)."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        if "raymlops" not in tokens:
            continue
        args = tokens[tokens.index("raymlops") + 1 :]
        for i, token in enumerate(args):
            if token in (">", ">>", "|", "&&", "||", ";"):
                args = args[:i]
                break
        found.append(args)
    return found


def _resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"incomplete command: raymlops {' '.join(args)}"
        name = rest.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"raymlops has no command '{name}' (in: {' '.join(args)})"
        command = sub
    return command, rest


def _check_arguments(command: click.Command, rest: list[str], line: str) -> None:
    options = {
        opt: param
        for param in command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }
    positional = 0
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-"):
            assert token in options, f"unknown option {token} in: raymlops {line}"
            if not options[token].is_flag:
                i += 1
        else:
            positional += 1
        i += 1
    wanted = sum(1 for p in command.params if isinstance(p, click.Argument))
    assert positional == wanted, f"{positional} arguments for {wanted} in: raymlops {line}"


def test_workflow_is_a_valid_github_actions_workflow() -> None:
    data = _workflow()
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "push" in triggers and "workflow_dispatch" in triggers
    jobs = data["jobs"]
    assert len(jobs) == 1
    job = next(iter(jobs.values()))
    assert job["runs-on"]
    for step in job["steps"]:
        assert ("uses" in step) != ("run" in step), step
        assert not step.get("continue-on-error"), "a failure must stop the pipeline"


def test_steps_call_existing_raymlops_commands_in_order() -> None:
    job = next(iter(_workflow()["jobs"].values()))
    called: list[str] = []
    for step in job["steps"]:
        for args in _invocations(step.get("run", "")):
            command, rest = _resolve(args)
            _check_arguments(command, rest, " ".join(args))
            called.append(" ".join(args[: len(args) - len(rest)]))
    assert called[:4] == ["config validate", "train", "gate", "promote"]
    assert {"card", "models history"} <= set(called)


def test_the_workflow_config_validates_and_names_the_model() -> None:
    data = _workflow()
    config = load_config(REPO / data["env"]["CONFIG"])
    assert config.registry.model_name == data["env"]["MODEL"]
    assert config.gate.thresholds and config.gate.champion is not None
    assert config.card.intended_use and config.card.limitations

"""models:/ URIs: parsing (raymlops.core.model_uri), `Predictor.from_uri` and
`load_predictor` on a real MLflow SQLite store, and the commands that take a URI where they
take a model name and version (predict, gate, card; batch, monitor and serve with -m).

No Ray: the store and the model come from tests/unit/test_governance.py's fixtures (a model
trained in-process and registered as train_and_register does). The tests that register
models are marked long (seconds each, beyond the default run's budget).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import raymlops
from raymlops.cli.base import _load_for_model
from raymlops.cli.main import cli
from raymlops.core.errors import RegistryError, UserInputError
from raymlops.core.model_uri import ModelURI, parse_model_uri, resolve_model_ref
from raymlops.model.predictor import Predictor
from raymlops.registry.store import Registry
from tests.unit.test_governance import (  # noqa: F401  (fixtures)
    Trained,
    _isolated_env,
    register,
    registry,
    trained,
)

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("uri", "name", "ref"),
    [
        ("models:/breast-cancer@champion", "breast-cancer", "champion"),
        ("models:/m@challenger_2", "m", "challenger_2"),
        ("models:/m/3", "m", 3),
        ("models:/my model.v2/12", "my model.v2", 12),
    ],
)
def test_valid_uris_parse_and_print_back(uri: str, name: str, ref: int | str) -> None:
    parsed = parse_model_uri(uri)
    assert parsed == ModelURI(name, ref)
    assert str(parsed) == uri


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("models:/m", "names no version or alias"),
        ("models:/m@", "alias after '@' is empty"),
        ("models:/m@bad alias", "may hold only letters"),
        ("models:/m/Production", "is a stage"),
        ("models:/m/latest", "'latest' is not supported"),
        ("models:/m/0", "not a version number"),
        ("models:/m/1.5", "not a version number"),
        ("models:/@champion", "model name is empty"),
        ("models:/a/b/3", "'a/b' is not one model name"),
        ("models://profile@databricks/m/1", "must start with 'models:/'"),
        ("models:m/1", "must start with 'models:/'"),
    ],
)
def test_malformed_uris_are_refused_naming_the_uri_and_the_forms(uri: str, why: str) -> None:
    with pytest.raises(UserInputError) as caught:
        parse_model_uri(uri)
    message = str(caught.value)
    assert message.startswith(f"invalid model URI '{uri}': ")
    assert why in message
    assert "models:/NAME@ALIAS" in message and "models:/NAME/VERSION" in message
    assert caught.value.exit_code == 2


def test_resolve_takes_a_name_and_version_or_a_uri_never_both() -> None:
    assert resolve_model_ref("m", "4") == ("m", 4)
    assert resolve_model_ref("m", "challenger") == ("m", "challenger")
    assert resolve_model_ref("m", None) == ("m", None)
    assert resolve_model_ref("m", None, default="champion") == ("m", "champion")
    assert resolve_model_ref("models:/m@champion", None, default=1) == ("m", "champion")
    with pytest.raises(UserInputError, match="already names a version or alias"):
        resolve_model_ref("models:/m/2", "3")


# --------------------------------------------------------------------------- Python API


@pytest.mark.long  # two registrations on a fresh store: ~10 s on 2 shared CPUs
def test_predictor_from_uri_and_load_predictor_load_the_registered_version(
    registry: Registry,  # noqa: F811
    trained: Trained,  # noqa: F811
) -> None:
    register(registry, trained, trained.good)  # v1, champion
    register(registry, trained, trained.constant)  # v2, challenger
    rows = trained.splits.test.slice(0, 20)
    expected = trained.good.predict(rows).probabilities

    by_alias = Predictor.from_uri("models:/m@champion", registry)
    by_number = Predictor.from_uri("models:/m/2", registry)
    assert (by_alias.metadata["version"], by_number.metadata["version"]) == (1, 2)
    np.testing.assert_allclose(by_alias.predict(rows).probabilities, expected, rtol=1e-6)
    assert set(by_number.predict(rows).predictions) == {"0"}  # the constant model
    top = raymlops.load_predictor("models:/m@challenger", home=registry.home)
    assert top.metadata["version"] == 2

    with pytest.raises(RegistryError, match="model 'm' has no alias 'prod'"):
        Predictor.from_uri("models:/m@prod", registry)
    with pytest.raises(RegistryError, match="model 'm' has no version 9"):
        Predictor.from_uri("models:/m/9", registry)
    with pytest.raises(RegistryError, match="no registered model named 'x'"):
        Predictor.from_uri("models:/x@champion", registry)
    with pytest.raises(UserInputError, match="invalid model URI"):
        Predictor.from_uri("models:/m", registry)


# --------------------------------------------------------------------------- commands


@pytest.fixture
def invoke(tmp_path: Path) -> Callable[..., Any]:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli, [*args, "--home", str(tmp_path)])

    return run


@pytest.mark.long  # two registrations on a fresh store: ~10 s on 2 shared CPUs
def test_predict_gate_and_card_take_a_uri(
    registry: Registry,  # noqa: F811
    trained: Trained,  # noqa: F811
    invoke: Callable[..., Any],
) -> None:
    register(registry, trained, trained.good)
    register(registry, trained, trained.constant)

    predicted = invoke(
        "predict", "models:/m/2", "--input", str(trained.data), "--limit", "3", "--json"
    )
    assert predicted.exit_code == 0, predicted.output
    result = json.loads(predicted.stdout)
    assert (result["model"], result["version"]) == ("m", 2)
    assert [row["prediction"] for row in result["rows"]] == ["0", "0", "0"]
    by_name = invoke("predict", "m", "--input", str(trained.data), "--limit", "3", "--json")
    assert json.loads(by_name.stdout)["version"] == 1  # the champion by default

    gated = invoke("gate", "models:/m@challenger", "--no-record", "--json")
    assert gated.exit_code == 1  # the constant model fails its threshold
    assert json.loads(gated.stdout)["version"] == 2

    card = invoke("card", "models:/m@champion")
    assert card.exit_code == 0 and card.stdout.startswith("# Model card: m v1")

    unknown = invoke("card", "models:/m@prod")
    assert unknown.exit_code == 2 and "model 'm' has no alias 'prod'" in unknown.stderr
    both = invoke("predict", "models:/m/1", "--version", "2", "--input", str(trained.data))
    assert both.exit_code == 2 and "already names a version or alias" in both.stderr
    missing = invoke("gate", "m")
    assert missing.exit_code == 2 and "give NAME VERSION" in missing.stderr


@pytest.mark.parametrize("command", ["batch", "monitor", "serve"])
def test_model_option_refuses_a_malformed_uri_before_any_work(
    command: str, invoke: Callable[..., Any], tmp_path: Path
) -> None:
    extra = ["--input", "x", "--output", str(tmp_path / "o")] if command == "batch" else []
    result = invoke(command, "-m", "models:/breast-cancer/Production", *extra)
    assert result.exit_code == 2
    assert "invalid model URI 'models:/breast-cancer/Production'" in result.stderr
    assert "is a stage" in result.stderr


def test_serve_canary_needs_a_challenger_by_number_or_uri(invoke: Callable[..., Any]) -> None:
    neither = invoke("serve", "canary")
    assert neither.exit_code == 2 and "name the challenger" in neither.stderr
    both = invoke("serve", "canary", "-m", "models:/m/2", "--version", "3")
    assert both.exit_code == 2 and "already names a version or alias" in both.stderr


def test_model_option_names_the_model_and_its_version() -> None:
    config, ref = _load_for_model(None, (), "models:/other-model@challenger", None)
    assert (config.registry.model_name, ref) == ("other-model", "challenger")
    config, ref = _load_for_model(None, (), "123", "4")  # a name YAML would read as a number
    assert (config.registry.model_name, ref) == ("123", 4)
    config, ref = _load_for_model(None, ("train.epochs=2",), None, "champion")
    assert (config.registry.model_name, config.train.epochs, ref) == (
        "breast-cancer",
        2,
        "champion",
    )

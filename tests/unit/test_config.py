"""Tests of raymlops.core.config: loading, validation errors, overrides, hashing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from raymlops.core.config import (
    PipelineConfig,
    SearchSpec,
    TuneConfig,
    apply_overrides,
    config_hash,
    config_to_yaml,
    default_config_path,
    load_config,
)
from raymlops.core.errors import ConfigError, UserInputError


def _default_raw() -> dict[str, Any]:
    raw = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


def _write(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    raw = _default_raw()
    mutate(raw)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _config_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


# --------------------------------------------------------------------------- default


def test_load_none_gives_embedded_default() -> None:
    config = load_config(None)
    assert config == load_config(default_config_path())
    assert config.name == "breast-cancer"
    assert config.data.path == "sklearn:breast_cancer"
    assert config.data.label == "target"
    assert config.data.task == "classification"
    assert config.model.architecture == "mlp"
    # params are validated and completed with the architecture's defaults.
    assert config.model.params == {
        "depth": 2,
        "width": 64,
        "dropout": 0.1,
        "activation": "relu",
        "batch_norm": False,
    }
    assert config.train.epochs == 20
    assert config.train.learning_rate == pytest.approx(0.003)
    assert config.tune.search_space["model.params.depth"].values == [1, 2, 3]
    assert config.registry.model_name == "breast-cancer"


def test_default_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = load_config(None)
    path = tmp_path / "effective.yaml"
    path.write_text(config_to_yaml(config), encoding="utf-8")
    assert load_config(path) == config
    assert config_hash(load_config(path)) == config_hash(config)


# --------------------------------------------------------------------------- bad configs


def test_unknown_key_names_key_path_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["data"].update(lable="target"))
    message = _config_error(path)
    assert "data.lable" in message
    assert "unknown key" in message
    assert str(path) in message


def test_unknown_nested_key_in_split(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["data"]["split"].update(sed=1))
    message = _config_error(path)
    assert "data.split.sed: unknown key" in message


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["train"].update(epochs="ten"))
    message = _config_error(path)
    assert "train.epochs" in message
    assert str(path) in message


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["data"].pop("label"))
    message = _config_error(path)
    assert "data.label: required key is missing" in message


@pytest.mark.parametrize(
    ("validation", "test"),
    [(0.45, 0.45), (0.5, 0.45), (0.8, 0.15)],
)
def test_split_must_leave_training_rows(tmp_path: Path, validation: float, test: float) -> None:
    path = _write(
        tmp_path, lambda raw: raw["data"]["split"].update(validation=validation, test=test)
    )
    message = _config_error(path)
    assert "data.split" in message
    assert "10%" in message


def test_split_just_below_the_limit_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["data"]["split"].update(validation=0.4, test=0.4))
    config = load_config(path)
    assert config.data.split.validation == pytest.approx(0.4)


def test_search_spec_low_must_be_below_high() -> None:
    with pytest.raises(ValueError, match=r"low \(0\.5\) must be below high \(0\.5\)"):
        SearchSpec(type="uniform", low=0.5, high=0.5)
    with pytest.raises(ValueError, match="must be below"):
        SearchSpec(type="loguniform", low=0.1, high=0.01)


def test_search_spec_shapes() -> None:
    with pytest.raises(ValueError, match="loguniform needs low > 0"):
        SearchSpec(type="loguniform", low=0.0, high=1.0)
    with pytest.raises(ValueError, match="non-empty 'values'"):
        SearchSpec(type="choice", values=[])
    with pytest.raises(ValueError, match="takes 'values', not low/high"):
        SearchSpec(type="grid", values=[1], low=0)
    with pytest.raises(ValueError, match="needs 'low' and 'high'"):
        SearchSpec(type="uniform", low=0.0)
    with pytest.raises(ValueError, match="randint needs integer"):
        SearchSpec(type="randint", low=0.5, high=3)
    assert SearchSpec(type="randint", low=1, high=4).candidate_values() == [1, 3]
    assert SearchSpec(type="uniform", low=0.1, high=0.2).candidate_values() == [0.1, 0.2]
    assert SearchSpec(type="choice", values=["a", "b"]).candidate_values() == ["a", "b"]


def test_loguniform_with_zero_low_in_file_names_the_dimension(tmp_path: Path) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tune"]["search_space"]["train.learning_rate"] = {
            "type": "loguniform",
            "low": 0,
            "high": 0.1,
        }

    message = _config_error(_write(tmp_path, mutate))
    assert "tune.search_space.train.learning_rate" in message
    assert "loguniform needs low > 0" in message


@pytest.mark.parametrize("bad_path", ["data.path", "registry.model_name", "train", "tune.seed"])
def test_search_space_path_outside_model_and_train(tmp_path: Path, bad_path: str) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tune"]["search_space"][bad_path] = {"type": "choice", "values": [1, 2]}

    message = _config_error(_write(tmp_path, mutate))
    assert f"search_space key '{bad_path}'" in message
    assert "model or train" in message


def test_search_space_choice_invalid_for_base_config(tmp_path: Path) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tune"]["search_space"]["model.params.depth"] = {"type": "choice", "values": [-1]}

    message = _config_error(_write(tmp_path, mutate))
    assert "model.params.depth" in message
    assert "-1" in message
    assert str(tmp_path) in message


@pytest.mark.parametrize(
    ("path", "spec"),
    [
        ("train.learning_rate", {"type": "uniform", "low": 0.001, "high": 20.0}),
        ("train.batch_size", {"type": "randint", "low": 0, "high": 4}),
        ("model.params.activation", {"type": "choice", "values": ["relu", "swish"]}),
        ("model.params.colour", {"type": "choice", "values": [1]}),
        ("train.epochz", {"type": "choice", "values": [1]}),
    ],
)
def test_search_space_bounds_are_checked_against_the_schemas(
    tmp_path: Path, path: str, spec: dict[str, Any]
) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tune"]["search_space"][path] = spec

    message = _config_error(_write(tmp_path, mutate))
    assert f"search_space '{path}'" in message
    assert "is invalid" in message


def test_feature_column_cannot_be_the_label(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["features"].update(numeric=["target", "x"]))
    message = _config_error(path)
    assert "column 'target' is the label or an id" in message


def test_unknown_architecture_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["model"].update(architecture="transformer-xl"))
    message = _config_error(path)
    assert "unknown architecture 'transformer-xl'" in message
    assert "mlp" in message


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata:\n  path: a\n   label: y\n", encoding="utf-8")
    message = _config_error(path)
    assert "invalid YAML" in message
    assert str(path) in message
    assert "line 4" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    assert "top level must be a mapping" in _config_error(path)


def test_empty_file_reports_missing_sections(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    message = _config_error(path)
    for key in ("name", "data", "registry"):
        assert f"{key}: required key is missing" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = _config_error(path)
    assert message == f"config file not found: {path}"


def test_config_error_is_a_user_input_error() -> None:
    assert issubclass(ConfigError, UserInputError)
    assert ConfigError.exit_code == 2


# --------------------------------------------------------------------------- overrides


def test_set_overrides() -> None:
    config = load_config(
        default_config_path(),
        [
            "train.epochs=3",
            "tune.scheduler=fifo",
            "model.params.width=8",
            "train.early_stopping_patience=null",
            "data.split.seed=7",
        ],
    )
    assert config.train.epochs == 3
    assert isinstance(config.train.epochs, int)
    assert config.tune.scheduler == "fifo"
    assert config.model.params["width"] == 8
    assert config.model.params["depth"] == 2  # untouched siblings keep their values
    assert config.train.early_stopping_patience is None
    assert config.data.split.seed == 7
    assert config.data.split.validation == pytest.approx(0.15)


def test_override_values_are_parsed_as_yaml() -> None:
    result = apply_overrides(
        {"a": {"b": 1}},
        ["a.b=2.5", "a.c=[1, 2]", "a.d=true", "a.e=", "a.f=x=y", "a.g={k: v}"],
    )
    assert result == {"a": {"b": 2.5, "c": [1, 2], "d": True, "e": "", "f": "x=y", "g": {"k": "v"}}}


def test_apply_overrides_does_not_mutate_its_input() -> None:
    data = {"train": {"epochs": 5}}
    snapshot = copy.deepcopy(data)
    result = apply_overrides(data, ["train.epochs=6", "train.seed=1"])
    assert data == snapshot
    assert result == {"train": {"epochs": 6, "seed": 1}}


@pytest.mark.parametrize("bad", ["train.epochs", "train.epochs3", ""])
def test_override_without_equals_sign(bad: str) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(default_config_path(), [bad])


@pytest.mark.parametrize("bad", ["=3", "train..epochs=3", ".epochs=3"])
def test_override_with_empty_key(bad: str) -> None:
    with pytest.raises(ConfigError, match="empty key"):
        load_config(default_config_path(), [bad])


def test_override_through_a_scalar_is_rejected_naming_the_file() -> None:
    message = _config_error(default_config_path(), ["name.sub=1"])
    assert "'name' is not a section" in message
    assert str(default_config_path()) in message


def test_override_wrong_type_names_key_and_overrides() -> None:
    message = _config_error(default_config_path(), ["train.epochs=ten"])
    assert "train.epochs" in message
    assert "with --set overrides" in message


def test_set_addresses_one_field_of_a_dotted_search_space_key() -> None:
    # Search-space keys contain dots themselves; --set keeps them whole.
    config = load_config(default_config_path(), ["tune.search_space.train.learning_rate.low=0.001"])
    spec = config.tune.search_space["train.learning_rate"]
    assert spec.low == 0.001
    assert "train" not in config.tune.search_space


def test_set_adds_a_new_search_space_dimension() -> None:
    config = load_config(
        default_config_path(),
        [
            "tune.search_space.train.batch_size.type=choice",
            "tune.search_space.train.batch_size.values=[16, 32]",
        ],
    )
    assert config.tune.search_space["train.batch_size"].values == [16, 32]


def test_whole_search_space_can_be_replaced_by_set() -> None:
    config = load_config(
        default_config_path(),
        ["tune.search_space={train.learning_rate: {type: loguniform, low: 0.001, high: 0.01}}"],
    )
    assert list(config.tune.search_space) == ["train.learning_rate"]
    spec = config.tune.search_space["train.learning_rate"]
    assert (spec.type, spec.low, spec.high) == ("loguniform", 0.001, 0.01)


# --------------------------------------------------------------------------- hashing, trials


def test_config_hash_is_stable_and_sensitive() -> None:
    a = load_config(None)
    b = load_config(None)
    digest = config_hash(a)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert config_hash(b) == digest
    assert config_hash(load_config(None, ["train.epochs=21"])) != digest
    assert config_hash(load_config(None, ["model.params.dropout=0.2"])) != digest
    assert config_hash(a.apply_trial({"train.epochs": 20})) == digest


def test_apply_trial_applies_dotted_overrides() -> None:
    base = load_config(None)
    trial = base.apply_trial(
        {"train.learning_rate": 0.01, "model.params.width": 16, "model.params.depth": 1}
    )
    assert isinstance(trial, PipelineConfig)
    assert trial.train.learning_rate == pytest.approx(0.01)
    assert trial.model.params["width"] == 16
    assert trial.model.params["depth"] == 1
    # The base config is not modified.
    assert base.train.learning_rate == pytest.approx(0.003)
    assert base.model.params["width"] == 64


def test_apply_trial_validates_the_result() -> None:
    with pytest.raises(ValueError, match="depth"):
        load_config(None).apply_trial({"model.params.depth": 99})


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        (None, "min"),
        ("val_loss", "min"),
        ("val_log_loss", "min"),
        ("val_rmse", "min"),
        ("val_mae", "min"),
        ("val_accuracy", "max"),
        ("val_f1_macro", "max"),
        ("val_roc_auc", "max"),
        ("val_r2", "max"),
    ],
)
def test_resolved_metric_infers_mode(metric: str | None, mode: str) -> None:
    name, resolved = TuneConfig(metric=metric).resolved_metric()
    assert name == (metric or "val_loss")
    assert resolved == mode


def test_resolved_metric_explicit_mode_wins() -> None:
    assert TuneConfig(metric="val_loss", mode="max").resolved_metric() == ("val_loss", "max")


def test_mode_without_metric_is_rejected() -> None:
    with pytest.raises(ValueError, match="'mode' is set but 'metric' is not"):
        TuneConfig(mode="min")


def test_search_space_param_error_has_no_pydantic_prefix(tmp_path: Path) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tune"]["search_space"]["model.params.depth"] = {"type": "choice", "values": [-1]}

    message = _config_error(_write(tmp_path, mutate))
    assert "Value error," not in message


def test_allowed_modules_are_imported_with_the_config_and_a_missing_one_is_named() -> None:
    from raymlops.core.architecture_params import architecture_names

    config = load_config(None, ["model.allowed_modules=[tests.integration.serving_arch]"])
    assert config.model.allowed_modules == ["tests.integration.serving_arch"]
    assert "tests.integration.serving_arch:raising" in architecture_names()  # registered
    with pytest.raises(ConfigError, match=r"allowed_modules: cannot import 'no_such_module_x'"):
        load_config(None, ["model.allowed_modules=[no_such_module_x]"])

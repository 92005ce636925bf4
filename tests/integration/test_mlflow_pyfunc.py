"""Every registered version is an MLflow pyfunc model (#17): MLflow's own loader and server
answer as raymlops' `Predictor` does.

Real MLflow SQLite stores under tmp_path, real `mlflow.pyfunc.load_model("models:/…")`, a
real `mlflow models serve` subprocess answering real HTTP. No Ray: the versions are
untrained models (seeded random weights) on synthetic data, registered with
`Registry.register` as a training run registers its best trial, so each costs well under a
second; the server test is marked `long`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.exceptions import MlflowException

from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig
from raymlops.data.dataset import DatasetSplits, DatasetVersion, load_dataset, synth_dataset
from raymlops.model.architectures import build_model
from raymlops.model.features import Preprocessor
from raymlops.model.predictor import Predictor
from raymlops.registry.store import Registry
from raymlops.train.loop import architecture_spec
from tests.integration.shared_nothing import BIN, _http_ok, _start, free_port

pytestmark = [pytest.mark.integration]


@dataclass
class Registered:
    """A registry home with one version of `name` (champion) and the data behind it."""

    name: str
    home: Path
    config: PipelineConfig
    dataset: DatasetVersion
    splits: DatasetSplits
    predictor: Predictor

    @property
    def registry(self) -> Registry:
        return Registry(home=self.home)

    def rows(self, n: int = 40) -> pd.DataFrame:
        """Test-split rows (features only), with a missing value in each feature and a
        category never seen in training: the imputation paths are compared too."""
        frame = self.splits.test.to_pandas()[self.predictor.feature_names].head(n).copy()
        for i, column in enumerate(frame.columns):
            frame.loc[frame.index[i], column] = None
        for column in self.predictor.preprocessor.categorical:
            frame.loc[frame.index[-1], column] = "never-seen"
        return frame.reset_index(drop=True)


def _config(name: str, data: Path, input_example: str = "profile", **serve: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": name,
            "data": {"path": str(data), "label": "label", "id_columns": ["id"]},
            "model": {"params": {"depth": 1, "width": 8, "dropout": 0.0}},
            "registry": {"model_name": name, "experiment": name, "input_example": input_example},
            "serve": serve,
        }
    )


def _untrained(config: PipelineConfig) -> tuple[DatasetVersion, DatasetSplits, Predictor]:
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    spec = architecture_spec(config, prep)
    torch.manual_seed(0)
    model = build_model(spec["name"], spec["params"], spec["in_features"], spec["out_features"])
    return dataset, splits, Predictor(model, prep, spec)


def _register(
    home: Path,
    name: str,
    task: str,
    *,
    old_style: bool = False,
    input_example: str = "profile",
    **serve: Any,
) -> Registered:
    """Register an untrained model `name` on fresh synthetic data in the registry at
    `home` (one per module: creating an MLflow database costs seconds)."""
    data = home / f"{name}.parquet"
    synth_dataset(str(data), rows=300, features=3, categorical=1, task=task, seed=5)
    config = _config(name, data, input_example, **serve)
    dataset, splits, predictor = _untrained(config)
    registry = Registry(home=home)
    with registry.pipeline_run(config, "run") as run_id:
        if old_style:
            _register_as_before_17(registry, config, run_id, predictor, dataset)
        else:
            registry.register(config, run_id, predictor, dataset, {"val_loss": 1.0})
    return Registered(name, home, config, dataset, splits, predictor)


def _register_as_before_17(
    registry: Registry,
    config: PipelineConfig,
    run_id: str,
    predictor: Predictor,
    dataset: DatasetVersion,
) -> None:
    """What `Registry.register` wrote before #17: raymlops' files and digest tags, no
    MLflow files."""
    client = registry.client
    files = {
        "profile.json": dataset.profile,
        "dataset.json": {k: v for k, v in dataset.to_dict().items() if k != "profile"},
        "config.json": config.model_dump(mode="json"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        digests = predictor.save(tmp, extra_files=files)
        client.log_artifacts(run_id, tmp, artifact_path="model")
    if not client.search_registered_models(f"name = '{config.registry.model_name}'"):
        client.create_registered_model(config.registry.model_name)
    version = client.create_model_version(
        config.registry.model_name,
        f"{client.get_run(run_id).info.artifact_uri}/model",
        run_id=run_id,
        tags={f"raymlops.sha256.{k}": v for k, v in digests.items()},
    )
    client.set_registered_model_alias(config.registry.model_name, "champion", version.version)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def classification(home: Path) -> Registered:
    return _register(home, "pyfunc-cls", "classification")


@pytest.fixture(scope="module")
def regression(home: Path) -> Registered:
    return _register(home, "pyfunc-reg", "regression")


@pytest.fixture
def tracking(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point MLflow's own API (models:/ URIs) at a registry, as an MLflow user would."""

    def point(registered: Registered) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.registry.tracking_uri)

    return point


def _raymlops_frame(registered: Registered, rows: pd.DataFrame) -> pd.DataFrame:
    predictor = registered.registry.load_predictor(registered.name, "champion")
    return predictor.predict(rows).to_frame()


# --------------------------------------------------------------------------- pyfunc


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_mlflow_pyfunc_predicts_what_the_predictor_predicts(
    task: str, classification: Registered, regression: Registered, tracking: Any
) -> None:
    registered = classification if task == "classification" else regression
    tracking(registered)
    model = mlflow.pyfunc.load_model(f"models:/{registered.name}@champion")
    rows = registered.rows()

    got = model.predict(rows)
    expected = _raymlops_frame(registered, rows)

    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), expected, check_dtype=False, rtol=1e-6
    )
    if task == "classification":
        assert list(got.columns) == ["prediction", "proba_0", "proba_1"]
        assert set(got["prediction"]) <= {"0", "1"}
    else:
        assert list(got.columns) == ["prediction"]
        assert got["prediction"].std() > 0  # not a constant: the rows differ


def test_signature_example_and_requirements_describe_the_version(
    classification: Registered, tracking: Any
) -> None:
    tracking(classification)
    uri = f"models:/{classification.name}@champion"
    info = mlflow.models.get_model_info(uri)
    prep = classification.predictor.preprocessor

    inputs = {spec["name"]: spec for spec in info.signature.inputs.to_dict()}
    assert list(inputs) == prep.feature_names
    assert {inputs[n]["type"] for n in prep.numeric} == {"double"}
    assert {inputs[n]["type"] for n in prep.categorical} == {"string"}
    # serve.allow_missing (the default) accepts and imputes a missing value: optional.
    assert not any(spec["required"] for spec in inputs.values())
    outputs = [spec["name"] for spec in info.signature.outputs.to_dict()]
    assert outputs == ["prediction", "proba_0", "proba_1"]

    model = mlflow.pyfunc.load_model(uri)
    example = model.input_example
    assert isinstance(example, pd.DataFrame) and list(example.columns) == prep.feature_names
    # The profile's typical row (registry.input_example: profile), no training record.
    profile = classification.dataset.profile["columns"]
    assert len(example) == 1
    for name in prep.numeric:
        assert example.loc[0, name] == pytest.approx(profile[name]["quantiles"]["0.50"])
    for name in prep.categorical:
        assert example.loc[0, name] == next(iter(profile[name]["frequencies"]))

    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    for package in ("raymlops", "mlflow", "torch", "pandas", "numpy", "safetensors"):
        version = metadata.version(package).split("+")[0]
        assert f"{package}=={version}" in requirements


def test_registry_input_example_rows_stores_the_first_training_rows(home: Path) -> None:
    rows = _register(home, "pyfunc-rows", "classification", input_example="rows")
    prep = rows.predictor.preprocessor
    run_id = rows.registry.version_info(rows.name, 1).run_id
    artifacts = rows.registry.get_run(run_id).info.artifact_uri
    example = mlflow.pyfunc.load_model(f"{artifacts}/model").input_example
    source = pd.read_parquet(rows.config.data.path)[prep.feature_names]
    first = source.dropna().head(len(example)).reset_index(drop=True)  # training data rows
    assert len(example) > 1
    pd.testing.assert_frame_equal(example, first, check_dtype=False)


def test_a_left_out_optional_feature_is_missing_and_a_required_one_is_refused(
    classification: Registered, home: Path, tracking: Any
) -> None:
    # Registered before MLFLOW_TRACKING_URI is set: with it, the registry is not the embedded
    # one and MLflow would put the new experiment's artifacts in ./mlruns.
    strict = _register(home, "pyfunc-strict", "classification", allow_missing=False)
    tracking(classification)
    model = mlflow.pyfunc.load_model(f"models:/{classification.name}@champion")
    rows = classification.rows()
    left_out = classification.predictor.preprocessor.numeric[0]
    as_missing = rows.assign(**{left_out: np.nan})

    got = model.predict(rows.drop(columns=[left_out]))
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), _raymlops_frame(classification, as_missing), rtol=1e-6
    )

    tracking(strict)
    strict_model = mlflow.pyfunc.load_model(f"models:/{strict.name}@champion")
    with pytest.raises(MlflowException, match=left_out):
        strict_model.predict(rows.drop(columns=[left_out]))


def _loads_as_raymlops(old: Registered, tracking: Any) -> None:
    """Version 1 of `old`, loaded by MLflow's own pyfunc loader, predicts as raymlops'
    Predictor does (the files MLflow fetches are the ones whose digests are recorded)."""
    rows = old.rows()
    tracking(old)
    pd.testing.assert_frame_equal(
        mlflow.pyfunc.load_model(f"models:/{old.name}/1").predict(rows).reset_index(drop=True),
        _raymlops_frame(old, rows),
        check_dtype=False,
        rtol=1e-6,
    )


def test_upgrade_adds_the_flavor_to_a_version_registered_before_it(
    home: Path, tracking: Any
) -> None:
    old = _register(home, "pyfunc-old", "classification", old_style=True)
    tracking(old)
    uri = f"models:/{old.name}@champion"
    rows = old.rows()
    before = _raymlops_frame(old, rows)  # raymlops loads it as it always did
    with pytest.raises(MlflowException):
        mlflow.pyfunc.load_model(uri)

    home = ["--home", str(old.home)]
    result = CliRunner().invoke(cli, ["models", "upgrade", old.name, *home])
    assert result.exit_code == 0, result.output
    assert f"{old.name} v1: flavor added (MLmodel, " in result.output

    pd.testing.assert_frame_equal(
        mlflow.pyfunc.load_model(uri).predict(rows).reset_index(drop=True),
        before,
        check_dtype=False,
        rtol=1e-6,
    )
    # The new files' digests are recorded; raymlops fetches and verifies them too.
    assert "MLmodel" in old.registry.version_info(old.name, 1).digests
    pd.testing.assert_frame_equal(_raymlops_frame(old, rows), before)

    again = CliRunner().invoke(
        cli, ["models", "upgrade", old.name, "--version", "1", "--json", *home]
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.output) == [
        {"name": old.name, "version": 1, "added": [], "error": None}
    ]


def test_an_upgrade_cut_off_before_its_tags_is_done_again(
    home: Path, tracking: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the files were uploaded and before their digests were tagged: MLmodel
    is there, and the version is still not an MLflow model raymlops can load. A rerun (on
    another machine: no cache) upgrades it in full."""
    old = _register(home, "pyfunc-cut", "classification", old_style=True)
    registry = old.registry

    def crash(*args: Any) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(Registry, "set_version_tag", crash)
        with pytest.raises(RuntimeError, match="killed"):
            registry.add_mlflow_flavor(old.name, 1)
    assert "MLmodel" not in registry.version_info(old.name, 1).digests
    shutil.rmtree(home / "cache" / "models" / old.name)

    added = registry.add_mlflow_flavor(old.name, 1)
    assert "MLmodel" in added
    info = registry.version_info(old.name, 1)
    assert {f"raymlops.sha256.{f}" for f in added} <= set(info.tags)
    assert info.tags["raymlops.mlflow_flavor"] == "added"
    _loads_as_raymlops(old, tracking)


def test_upgrade_reports_each_version_it_cannot_upgrade_and_goes_on(home: Path) -> None:
    old = _register(home, "pyfunc-mixed", "classification", old_style=True)
    client = old.registry.client
    source = client.get_model_version(old.name, "1").source
    client.create_model_version(old.name, source)  # v2: no digests recorded, unloadable
    _register_as_before_17(  # v3: upgradable, after the bad one
        old.registry,
        old.config,
        old.registry.start_run("v3", experiment_id=old.registry.experiment_id(old.name)),
        old.predictor,
        old.dataset,
    )
    args = ["--home", str(old.home), "--json"]

    result = CliRunner().invoke(cli, ["models", "upgrade", old.name, *args])
    assert result.exit_code == 1, result.output
    outcomes = {r["version"]: r for r in json.loads(result.stdout)}
    assert sorted(outcomes) == [1, 2, 3]
    assert "MLmodel" in outcomes[1]["added"] and "MLmodel" in outcomes[3]["added"]
    assert outcomes[2]["added"] == [] and "no artifact digests" in outcomes[2]["error"]
    assert "1 of 3 version(s) of pyfunc-mixed not upgraded: v2" in result.stderr

    by_uri = CliRunner().invoke(cli, ["models", "upgrade", f"models:/{old.name}/3", *args])
    assert by_uri.exit_code == 0, by_uri.output
    assert json.loads(by_uri.stdout) == [
        {"name": old.name, "version": 3, "added": [], "error": None}
    ]


@pytest.mark.long  # two full uploads one after the other: ~6 s quiet, more under load
def test_two_upgrades_of_one_version_at_once_add_the_flavor_once(
    home: Path, tracking: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `models upgrade` of one version at the same moment (two users, two machines):
    the audit lock serialises them, so one adds the files and the other finds them added;
    the digests recorded are those of the files stored. Each upgrade is held inside its
    critical section for a while, so that without the lock both would be adding at once."""
    import threading
    import time

    import raymlops.model.pyfunc as pyfunc

    old = _register(home, "pyfunc-race", "classification", old_style=True)
    save = pyfunc.save_mlflow_model
    inside = threading.Semaphore(0)

    def slow_save(*args: Any, **kwargs: Any) -> list[str]:
        inside.release()
        time.sleep(1.5)
        return save(*args, **kwargs)

    monkeypatch.setattr(pyfunc, "save_mlflow_model", slow_save)
    results: dict[int, list[str] | BaseException] = {}

    def upgrade(i: int) -> None:
        try:
            results[i] = Registry(home=old.home).add_mlflow_flavor(old.name, 1)
        except BaseException as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=upgrade, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    added = sorted((r for r in results.values()), key=lambda r: bool(r))
    assert len(added) == 2 and not any(isinstance(r, BaseException) for r in added), added
    assert added[0] == [] and "MLmodel" in added[1], added
    assert inside.acquire(blocking=False) and not inside.acquire(blocking=False)

    shutil.rmtree(home / "cache" / "models" / old.name)  # fetched and verified afresh
    _loads_as_raymlops(old, tracking)


@pytest.mark.long
def test_mlflow_evaluate_scores_the_version_as_raymlops_does(
    classification: Registered, tracking: Any
) -> None:
    # An experiment with its artifacts in the home (created before MLFLOW_TRACKING_URI is
    # set); MLflow's Default one would write evaluate's plots to ./mlruns.
    experiment_id = classification.registry.experiment_id("pyfunc-evaluate")
    tracking(classification)
    features = classification.predictor.feature_names
    data = classification.splits.test.to_pandas()[[*features, "label"]]
    data["label"] = data["label"].astype(str)  # the classes as the model names them

    with mlflow.start_run(experiment_id=experiment_id):
        # MLflow's evaluators take one column of predictions: the `prediction` output.
        result = mlflow.models.evaluate(
            f"models:/{classification.name}@champion",
            data,
            targets="label",
            model_type="classifier",
            model_config={"output": "prediction"},
        )

    labels = _raymlops_frame(classification, data[features])["prediction"]
    expected = float((labels == data["label"].reset_index(drop=True)).mean())
    assert result.metrics["accuracy_score"] == pytest.approx(expected)
    assert result.metrics["example_count"] == len(data)


# --------------------------------------------------------------------------- mlflow serve


@pytest.mark.long
def test_mlflow_models_serve_answers_a_real_request(
    classification: Registered, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": classification.registry.tracking_uri,
        # MLflow starts `uvicorn` by name: this virtual environment's.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{classification.name}@champion",
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server = _start("mlflow-serve", command, tmp_path, env, lambda: _http_ok(f"{url}/ping"), 180)
    try:
        rows = classification.rows(8)
        payload = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            body = json.loads(response.read())
    finally:
        server.stop()
    got = pd.DataFrame(body["predictions"])
    pd.testing.assert_frame_equal(
        got, _raymlops_frame(classification, rows), check_dtype=False, rtol=1e-6
    )

"""Training end to end on a real local Ray (one per module) and a real MLflow SQLite store.

Every test trains through `raymlops.loop.pipeline.train_and_register` (or the CLI in-process),
which reuses the module's Ray instead of starting its own.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig, config_hash
from raymlops.core.errors import ArtifactIntegrityError, ResourceError, TrainingError
from raymlops.data.dataset import load_dataset, synth_dataset
from raymlops.loop.training import TrainResult, train_and_register
from raymlops.model.artifacts import sha256_file
from raymlops.model.pyfunc import MLFLOW_FILES
from raymlops.registry.store import Registry, load_predictor
from tests.integration.ray_support import local_ray

REPO_ROOT = Path(__file__).resolve().parents[2]
CRASH_LOG_ENV = "RAYMLOPS_TEST_CRASH_LOG"  # same as tests.integration.crashy_arch
CRASH_ONCE = "tests.integration.crashy_arch:crash_once"
ALWAYS_CRASH = "tests.integration.crashy_arch:always_crash"

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crash_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash") / "attempts.log"


@pytest.fixture(scope="module")
def ray_cluster(crash_log: Path) -> Iterator[dict[str, float]]:
    """The module's Ray; its workers learn the crash log's path from the environment."""
    with local_ray(env={CRASH_LOG_ENV: str(crash_log)}) as resources:
        yield resources


@pytest.fixture(scope="module")
def classification_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 rows: id, f0..f3 (numeric), c0 (categorical, 8 levels), label (0/1)."""
    path = tmp_path_factory.mktemp("data") / "classification.parquet"
    synth_dataset(str(path), rows=600, features=4, categorical=1, seed=0)
    return path


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "regression.parquet"
    synth_dataset(str(path), rows=600, features=4, categorical=1, task="regression", seed=1)
    return path


def make_config(
    name: str,
    data: Path,
    *,
    num_samples: int = 2,
    epochs: int = 3,
    architecture: str = "mlp",
    **tune: Any,
) -> PipelineConfig:
    """A tiny FIFO search: every trial runs exactly `epochs` epochs (no early stopping)."""
    return PipelineConfig.model_validate(
        {
            "name": name,
            "data": {"path": str(data), "label": "label", "id_columns": ["id"]},
            "model": {
                "architecture": architecture,
                "params": {"depth": 1, "width": 16, "dropout": 0.0},
            },
            "train": {"epochs": epochs, "batch_size": 64, "early_stopping_patience": None},
            "tune": {
                "num_samples": num_samples,
                "scheduler": "fifo",
                "search_space": {
                    "train.learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2}
                },
                **tune,
            },
            "registry": {"model_name": name, "experiment": name},
        }
    )


def _is_pickle(path: Path) -> bool:
    if path.suffix in {".pkl", ".pickle", ".pt", ".pth", ".joblib", ".ckpt", ".bin"}:
        return True
    with path.open("rb") as fh:
        return fh.read(1) == b"\x80"  # pickle protocol >= 2 starts with PROTO (0x80)


# --------------------------------------------------------------------------- 1. classification


@pytest.mark.slow
def test_classification_end_to_end_registers_lineage_and_pickle_free_artifacts(
    tmp_path: Path, classification_data: Path
) -> None:
    config = make_config("synth-clf", classification_data, num_samples=2, epochs=3)
    first: TrainResult = train_and_register(config, home=tmp_path, echo=False)

    assert first.model_name == "synth-clf"
    assert first.version.version == 1
    assert first.version.aliases == ["champion"]
    assert (first.trials, first.failed_trials) == (2, 0)
    assert first.dataset.task == "classification"
    assert first.dataset.features == ["f0", "f1", "f2", "f3", "c0"]
    assert first.dataset.id_columns == ["id"]
    assert {"accuracy", "f1_macro", "log_loss", "roc_auc"} <= set(first.test_metrics)
    assert Path(first.experiment_path).parent == tmp_path / "tune"

    second = train_and_register(config, home=tmp_path, echo=False)
    assert second.version.version == 2
    assert second.version.aliases == ["challenger"]

    registry = Registry(home=tmp_path)
    assert registry.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert registry.version_info("synth-clf", "champion").version == 1
    assert registry.version_info("synth-clf", "challenger").version == 2
    assert [v.version for v in registry.list_versions("synth-clf")] == [2, 1]
    assert registry.list_models() == [
        {
            "name": "synth-clf",
            "versions": 2,
            "latest_version": 2,
            "aliases": {"champion": 1, "challenger": 2},
            "description": "",
        }
    ]

    # MLflow: a parent run with one nested child run per trial, each with a per-epoch history.
    client = registry.client
    parent = client.get_run(first.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["raymlops.config_hash"] == config_hash(config)
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1
    assert first.dataset.digest.startswith(inputs[0].dataset.digest)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{first.run_id}'",
    )
    assert len(children) == 2
    trial_ids = {child.data.tags["raymlops.trial_id"] for child in children}
    assert len(trial_ids) == 2
    assert trial_ids == {p.name for p in Path(first.experiment_path).iterdir() if p.is_dir()}
    for child in children:
        assert child.data.tags["raymlops.trial_status"] == "TERMINATED"
        assert child.info.status == "FINISHED"
        assert "train.learning_rate" in child.data.params
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == [1, 2, 3]
        assert all(np.isfinite(m.value) for m in history)

    # Lineage and integrity tags on the registered version.
    info = registry.version_info("synth-clf", 1)
    tags = info.tags
    reloaded_dataset, _, _ = load_dataset(config.data, config.features)
    assert tags["raymlops.dataset_digest"] == first.dataset.digest == reloaded_dataset.digest
    assert tags["raymlops.config_hash"] == config_hash(config)
    assert tags["raymlops.trial_id"] in trial_ids
    assert tags["raymlops.env.torch"] == importlib.metadata.version("torch")
    assert info.run_id == first.run_id
    assert info.metrics["test_accuracy"] == pytest.approx(first.test_metrics["accuracy"])

    folder, downloaded = registry.download("synth-clf", 1)
    assert downloaded.version == 1
    for name in (
        "weights.safetensors",
        "architecture.json",
        "preprocessing.json",
        "profile.json",
    ):
        assert tags[f"raymlops.sha256.{name}"] == sha256_file(folder / name)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert files, f"nothing downloaded into {folder}"
    pickles = [p.name for p in files if _is_pickle(p)]
    assert pickles == [], f"pickle files in the model artifacts: {pickles}"
    # raymlops' files are JSON and safetensors; MLflow's pyfunc files (models from code) are
    # its MLmodel, the model's code, pinned requirements and environment files.
    others = {p.name for p in files if p.suffix not in (".json", ".safetensors")}
    assert others <= MLFLOW_FILES, others

    # The champion alias and the version number load the same model.
    rows = pd.read_parquet(classification_data).head(40)
    by_alias = load_predictor("synth-clf", "champion", home=tmp_path)
    by_number = Registry(home=tmp_path).load_predictor("synth-clf", 1)
    assert by_alias.metadata["version"] == by_number.metadata["version"] == 1
    a, b = by_alias.predict(rows), by_number.predict(rows)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert a.probabilities is not None and b.probabilities is not None
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert set(a.predictions.tolist()) <= {"0", "1"}
    assert a.probabilities.shape == (40, 2)

    # The training profile: numeric histograms, categorical frequencies, no id column.
    profile = json.loads((folder / "profile.json").read_text())
    assert profile["num_rows"] == first.dataset.split["train"]
    columns = profile["columns"]
    assert set(columns) == {"f0", "f1", "f2", "f3", "c0"}
    for numeric in ("f0", "f1", "f2", "f3"):
        stats = columns[numeric]
        assert stats["kind"] == "numeric"
        assert stats["count"] == profile["num_rows"]
        assert {"mean", "std", "min", "max", "quantiles", "histogram"} <= set(stats)
        assert sum(stats["histogram"]["counts"]) == stats["count"] - stats["missing"]
    c0 = columns["c0"]
    assert c0["kind"] == "categorical"
    assert set(c0["frequencies"]) <= {f"v{i}" for i in range(8)}
    assert sum(c0["frequencies"].values()) + c0["other"] == c0["count"] - c0["missing"]
    assert profile["label"]["kind"] == "categorical"


# --------------------------------------------------------------------------- 2. regression


def test_regression_end_to_end(tmp_path: Path, regression_data: Path) -> None:
    config = make_config("synth-reg", regression_data, num_samples=2, epochs=3)
    result = train_and_register(config, home=tmp_path, echo=False)

    assert result.dataset.task == "regression"
    assert result.dataset.classes is None
    assert {"rmse", "mae", "r2"} <= set(result.test_metrics)
    assert all(np.isfinite(v) for v in result.test_metrics.values())
    assert result.test_metrics["rmse"] > 0
    assert result.version.version == 1
    assert result.version.aliases == ["champion"]

    predictor = load_predictor("synth-reg", "champion", home=tmp_path)
    assert predictor.task == "regression"
    prediction = predictor.predict(pd.read_parquet(regression_data).head(25))
    assert prediction.probabilities is None
    assert prediction.predictions.shape == (25,)
    assert prediction.predictions.dtype.kind == "f"
    assert np.all(np.isfinite(prediction.predictions))
    assert list(prediction.to_frame().columns) == ["prediction"]

    # A version trained under other library versions still loads, with a warning.
    registry = Registry(home=tmp_path)
    registry.client.set_model_version_tag("synth-reg", "1", "raymlops.env.torch", "1.0.0")
    with pytest.warns(RuntimeWarning, match=r"different environment: torch 1\.0\.0 → "):
        registry.load_predictor("synth-reg", 1)
    # Tampering with a recorded digest makes the load fail before anything is parsed.
    registry.client.set_model_version_tag(
        "synth-reg", "1", "raymlops.sha256.weights.safetensors", "0" * 64
    )
    with pytest.raises(ArtifactIntegrityError, match=r"weights\.safetensors"):
        registry.load_predictor("synth-reg", 1)


# --------------------------------------------------------------------------- 3. crashes


def _attempts(log: Path) -> list[str]:
    """Kinds of the model constructions logged by Ray workers (not by this process)."""
    if not log.exists():
        return []
    me = str(os.getpid())
    return [line.split()[0] for line in log.read_text().splitlines() if line.split()[1] != me]


@pytest.mark.slow
def test_crashed_trial_is_retried_and_the_model_registered(
    tmp_path: Path, classification_data: Path, crash_log: Path
) -> None:
    crash_log.unlink(missing_ok=True)
    config = make_config(
        "synth-crash-once",
        classification_data,
        num_samples=1,
        epochs=2,
        architecture=CRASH_ONCE,
        max_failures=1,
    )
    result = train_and_register(config, home=tmp_path, echo=False)

    assert _attempts(crash_log) == ["crash_once", "crash_once"], crash_log.read_text()
    assert (result.trials, result.failed_trials) == (1, 0)
    assert result.version.version == 1
    registry = Registry(home=tmp_path)
    assert [v.version for v in registry.list_versions("synth-crash-once")] == [1]
    child = registry.client.search_runs(
        [registry.experiment_id("synth-crash-once")],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.run_id}'",
    )
    assert [c.data.tags["raymlops.trial_status"] for c in child] == ["TERMINATED"]
    architecture = json.loads(
        (registry.download("synth-crash-once", 1)[0] / "architecture.json").read_text()
    )
    assert architecture["name"] == CRASH_ONCE


def test_trials_that_always_crash_raise_training_error_and_register_nothing(
    tmp_path: Path, classification_data: Path, crash_log: Path
) -> None:
    crash_log.unlink(missing_ok=True)
    config = make_config(
        "synth-always-crash",
        classification_data,
        num_samples=2,
        epochs=2,
        architecture=ALWAYS_CRASH,
        max_failures=0,
    )
    with pytest.raises(TrainingError, match="every trial failed") as excinfo:
        train_and_register(config, home=tmp_path, echo=False)
    assert "simulated crash" in str(excinfo.value)
    assert _attempts(crash_log) == ["always_crash", "always_crash"]  # one per trial, no retry
    assert Registry(home=tmp_path).list_models() == []


# --------------------------------------------------------------------------- 5. resources


def test_more_cpus_per_trial_than_the_cluster_has_fails_fast(
    tmp_path: Path, classification_data: Path, ray_cluster: dict[str, float]
) -> None:
    assert ray_cluster["CPU"] == 2
    config = make_config("synth-cpus", classification_data, cpus_per_trial=64)
    with pytest.raises(ResourceError, match=r"cpus_per_trial=64 .* 2 CPUs"):
        train_and_register(config, home=tmp_path, echo=False)
    assert Registry(home=tmp_path).list_models() == []
    assert not (tmp_path / "tune").exists()


def test_cli_reports_a_resource_error_in_one_line_with_exit_code_2(
    tmp_path: Path, classification_data: Path
) -> None:
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(
        f"name: synth-cli\n"
        f"data: {{path: {classification_data}, label: label, id_columns: [id]}}\n"
        f"train: {{epochs: 2}}\n"
        f"tune: {{num_samples: 1}}\n"
        f"registry: {{model_name: synth-cli}}\n"
    )
    # In-process, so that ray_session() reuses this module's Ray.
    args = ["train", "-c", str(config_file), "--home", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--set", "tune.cpus_per_trial=64"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "tune.cpus_per_trial=64" in errors[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert Registry(home=tmp_path).list_models() == []


def test_gpus_per_trial_on_a_cluster_without_gpus_fails_fast(
    tmp_path: Path, classification_data: Path, ray_cluster: dict[str, float]
) -> None:
    if ray_cluster.get("GPU", 0) >= 1:
        pytest.skip("this Ray cluster has a GPU")
    config = make_config("synth-gpus", classification_data, gpus_per_trial=1)
    with pytest.raises(ResourceError, match=r"gpus_per_trial=1 .* 0 GPUs"):
        train_and_register(config, home=tmp_path, echo=False)
    assert Registry(home=tmp_path).list_models() == []


@pytest.mark.gpu
def test_training_on_a_gpu_registers_a_version(tmp_path: Path, classification_data: Path) -> None:
    config = make_config(
        "synth-gpu", classification_data, num_samples=1, epochs=2, gpus_per_trial=1
    )
    result = train_and_register(config, home=tmp_path, echo=False)
    assert result.version.version == 1
    assert result.failed_trials == 0
    predictor = load_predictor("synth-gpu", "champion", home=tmp_path)
    assert len(predictor.predict(pd.read_parquet(classification_data).head(5)).predictions) == 5

"""The importance-weighted drift verdict end to end: a model trained through
`train_and_register` (real Ray Tune, real MLflow SQLite store) on data where one feature
drives the label and four are noise, then monitored on dataset sources (no prediction
column: the version's Predictor predicts over a sample of the rows).

A shift in the driving feature is drift (weighted), though only one of six compared columns
moves apart from the prediction; a shift in three noise features is not, though half of the
columns drift — the unweighted share says the opposite both times."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig
from raymlops.loop.retrain import retrain_reasons
from raymlops.loop.training import train_and_register
from raymlops.model.importance import IMPORTANCE_FILE
from raymlops.monitor.run import MonitorResult, run_monitor
from raymlops.registry.store import Registry
from tests.integration.test_training import make_config

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.usefixtures("ray_cluster")]

NOISE = ["n1", "n2", "n3", "n4"]


def _rows(n: int, seed: int, driver_scale: float = 1.0, noise_shift: float = 0.0) -> pa.Table:
    """`label` = 2·x0 + small noise; n1..n4 are noise the label never depends on."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(0, 1, n)
    label = 2.0 * x0 + rng.normal(0, 0.2, n)
    columns = {"id": np.arange(n), "x0": x0 * driver_scale}
    for i, name in enumerate(NOISE):
        columns[name] = rng.normal(noise_shift if i < 3 else 0.0, 1, n)
    return pa.table({**columns, "label": label})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, Path]:
    home = tmp_path_factory.mktemp("home")
    pq.write_table(_rows(3000, seed=0), home / "train.parquet")
    config = make_config("weighted", home / "train.parquet", num_samples=1, epochs=15)
    config = config.model_copy(
        update={"monitor": config.monitor.model_copy(update={"log_to_mlflow": False})}
    )
    train_and_register(config, home=home, echo=False)
    return config, home


def _monitor(trained: tuple[PipelineConfig, Path], tmp: Path, rows: pa.Table) -> MonitorResult:
    config, home = trained
    source = tmp / "rows.parquet"
    pq.write_table(rows.drop_columns(["label"]), source)
    return run_monitor(config, source=str(source), home=home, report=tmp / "r.html", echo=False)


def test_importance_and_the_prediction_profile_are_stored_with_the_version(
    trained: tuple[PipelineConfig, Path],
) -> None:
    _, home = trained
    registry = Registry(home=home)
    info = registry.version_info("weighted", 1)
    assert IMPORTANCE_FILE in info.digests  # digest-recorded and checked like the rest
    folder, _ = registry.download("weighted", 1)
    stored = json.loads((folder / IMPORTANCE_FILE).read_text())
    assert stored["method"] == "permutation" and stored["rows"] == 2000
    assert stored["weights"]["x0"] > 0.9, stored
    profile = json.loads((folder / "profile.json").read_text())
    assert profile["prediction"]["kind"] == "numeric"


def test_a_shift_in_the_driving_feature_is_drift_and_starts_retraining(
    trained: tuple[PipelineConfig, Path], tmp_path: Path
) -> None:
    config, home = trained
    result = _monitor(trained, tmp_path, _rows(3000, seed=5, driver_scale=1.3))
    drifted = {f.name: f.drifted for f in result.features}
    assert drifted["x0"] is True and drifted["prediction"] is True
    assert not any(drifted[n] for n in NOISE)
    assert result.dataset.method == "weighted" and result.verdict == "drift"
    assert result.dataset.share is not None and result.dataset.share > 0.9
    assert result.predicted_rows == 3000 and result.kpis == []
    assert "uniform sample of 3000" in result.compared()
    html = (tmp_path / "r.html").read_text()
    assert "Serving KPIs" not in html and "rows of the dataset" in html
    reasons = retrain_reasons(config, Registry(home=home), result)
    assert len(reasons) == 1 and reasons[0].startswith("drift (weighted)"), reasons

    share = config.model_copy(
        update={"monitor": config.monitor.model_copy(update={"verdict": "share"})}
    )
    source = tmp_path / "rows.parquet"
    counted = run_monitor(share, source=str(source), home=home, write_files=False, echo=False)
    assert counted.verdict == "no drift"  # 2 of 6 columns: the share misses it

    yaml = tmp_path / "pipeline.yaml"
    yaml.write_text(json.dumps(config.model_dump(mode="json")))
    args = ["monitor", "-c", str(yaml), "--home", str(home), "--no-mlflow"]
    cli_result = CliRunner().invoke(cli, [*args, "--source", str(source), "--fail-on-drift"])
    assert cli_result.exit_code == 1, cli_result.output


def test_a_shift_in_features_the_model_ignores_is_not_drift(
    trained: tuple[PipelineConfig, Path], tmp_path: Path
) -> None:
    config, home = trained
    result = _monitor(trained, tmp_path, _rows(3000, seed=6, noise_shift=1.0))
    drifted = {f.name: f.drifted for f in result.features}
    assert all(drifted[n] for n in NOISE[:3]) and drifted["x0"] is False
    assert drifted["prediction"] is False, result.summary()
    assert result.verdict == "no drift" and result.dataset.share is not None
    assert result.dataset.share < 0.1
    assert retrain_reasons(config, Registry(home=home), result) == []
    share = config.model_copy(
        update={"monitor": config.monitor.model_copy(update={"verdict": "share"})}
    )
    source = tmp_path / "rows.parquet"
    counted = run_monitor(share, source=str(source), home=home, write_files=False, echo=False)
    assert counted.verdict == "drift"  # 3 of 6 columns: the share cries wolf


def test_a_feature_rule_for_no_column_or_the_wrong_kind_fails_before_the_pass(
    trained: tuple[PipelineConfig, Path], tmp_path: Path
) -> None:
    """`monitor.features` is checked against the version's profile before anything is read
    (here a source that does not exist, which reading would report instead): a typo was
    silently never applied, and chi2 on a numeric feature failed only after the whole Ray
    pass."""
    from raymlops.core.config_operations import FeatureDriftConfig
    from raymlops.core.errors import DataError

    config, home = trained
    source = tmp_path / "not-there.parquet"
    cases = {
        "xO": r"monitor.features.xO: 'xO' is not a monitored column of weighted v1 "
        r"\(did you mean 'x0'\?\)",
        "x0": r"monitor.features.x0.method 'chi2' does not apply to a numeric feature",
    }
    for name, message in cases.items():
        rules = {name: FeatureDriftConfig(method="chi2")}
        bad = config.model_copy(
            update={"monitor": config.monitor.model_copy(update={"features": rules})}
        )
        with pytest.raises(DataError, match=message):
            run_monitor(bad, source=str(source), home=home, write_files=False, echo=False)

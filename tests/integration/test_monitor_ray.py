"""Monitoring end to end on a real local Ray (one per module) and a real MLflow SQLite store.

A version is registered directly (its profile is what matters; its weights are untrained),
and synthetic prediction logs are written in serving's format — Parquet under
`date=YYYY-MM-DD/version=N/part-<uuid>.parquet` with request_id, timestamp (UTC),
model_name, model_version, role, latency_ms, the raw features, prediction, proba_<class>
— without depending on the serving code.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig
from raymlops.data.dataset import load_dataset, load_table, synth_dataset
from raymlops.model.architectures import build_model
from raymlops.model.features import Preprocessor
from raymlops.model.predictor import Predictor
from raymlops.monitor.run import MonitorResult, default_prediction_log, run_monitor
from raymlops.registry.store import Registry
from raymlops.train.loop import architecture_spec

MODEL = "mon"
FEATURES = ["f0", "f1", "f2", "f3", "c0"]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding version 1 of MODEL, trained on 3000 synthetic rows (4 numeric
    features, 1 categorical, a 0/1 label)."""
    folder = tmp_path_factory.mktemp("home")
    synth_dataset(str(folder / "train.parquet"), 3000, features=4, categorical=1, seed=0)
    config = _config(folder)
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    model = build_model("mlp", config.model.params, prep.n_outputs, prep.n_targets)
    predictor = Predictor(model, prep, architecture_spec(config, prep))
    registry = Registry(home=folder)
    with registry.pipeline_run(config, "fixture") as run_id:
        registry.register(config, run_id, predictor, dataset, {"test_accuracy": 0.5})
    return folder


def _config(home: Path, **monitor: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": MODEL,
            "data": {"path": str(home / "train.parquet"), "label": "label", "id_columns": ["id"]},
            "registry": {"model_name": MODEL, "experiment": MODEL},
            "monitor": monitor,
        }
    )


def write_log(
    root: Path,
    rows: int,
    *,
    drift: float = 0.0,
    start: datetime | None = None,
    hours: float = 3.0,
    version: int = 1,
    role: str = "champion",
    seed: int = 1,
    errors: bool = False,
) -> pa.Table:
    """Append one part file of `rows` log rows spread over `hours` from `start`."""
    start = start or datetime.now(timezone.utc) - timedelta(hours=hours)
    src = root.parent / f"src-{uuid.uuid4().hex}.parquet"
    synth_dataset(str(src), rows, features=4, categorical=1, drift=drift, seed=seed)
    table = load_table(str(src))
    src.unlink()
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.uniform(0, hours * 3600e6, rows)).astype("timedelta64[us]")
    stamps = np.datetime64(start.replace(tzinfo=None), "us") + offsets
    label = table.column("label").to_numpy()
    p1 = np.clip(0.8 * label + rng.uniform(0, 0.2, rows), 0, 1)  # a good model's probabilities
    columns: dict[str, Any] = {
        "request_id": [uuid.uuid4().hex for _ in range(rows)],
        "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "model_name": [MODEL] * rows,
        "model_version": pa.array(np.full(rows, version, np.int64)),
        "role": [role] * rows,
        "latency_ms": rng.lognormal(1.0, 0.4, rows),
        # As serving writes them: numeric features float64, categorical strings.
        **{name: table.column(name).cast(pa.float64()) for name in FEATURES[:4]},
        "c0": table.column("c0"),
        "prediction": [str(int(p > 0.5)) for p in p1],
        "proba_0": 1 - p1,
        "proba_1": p1,
    }
    if errors:
        columns["error"] = pa.array(["timeout" if i % 20 == 0 else None for i in range(rows)])
    log = pa.table(columns)
    day = start.strftime("%Y-%m-%d")
    out = root / f"date={day}" / f"version={version}" / f"part-{uuid.uuid4()}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(log, out)
    return log.append_column("label", pa.array(label))


def _drifted(result: MonitorResult) -> dict[str, bool | None]:
    return {f.name: f.drifted for f in result.features}


# --------------------------------------------------------------------------- tests


def test_drift_is_detected_in_a_shifted_log_and_not_in_an_unshifted_one(
    home: Path, tmp_path: Path
) -> None:
    log = default_prediction_log(MODEL, home)
    write_log(log, 3000, seed=1)
    write_log(log, 400, version=2, role="challenger", seed=2, errors=True)
    report = tmp_path / "clean.html"
    clean = run_monitor(_config(home), home=home, report=report, echo=False)

    assert clean.verdict == "no drift" and clean.drift_detected is False
    assert clean.version == 1
    assert clean.rows_read == 3400 and clean.rows_compared == 3000
    assert [f.name for f in clean.features] == [*FEATURES, "prediction"]
    assert {f.method for f in clean.features} == {"wasserstein", "jensenshannon"}
    assert not any(_drifted(clean).values())
    kpis = {(k.version, k.role): k for k in clean.kpis}
    assert kpis[(1, "champion")].requests == 3000
    assert kpis[(2, "challenger")].requests == 400
    assert kpis[(2, "challenger")].error_rate == pytest.approx(0.05)
    assert kpis[(1, "champion")].latency_p95_ms is not None
    assert 3 <= len({k.window_start for k in clean.kpi_windows}) <= 4  # 3 hours, 1h windows

    # The outputs: a self-contained HTML report with plots, the JSON result beside it.
    assert clean.report_path == report.resolve()
    page = report.read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert "<script" not in page
    assert clean.json_path == report.with_suffix(".json").resolve()
    saved = json.loads(clean.json_path.read_text())
    assert saved["verdict"] == "no drift"
    assert saved["mlflow_run_id"] == clean.run_id

    # The MLflow run: verdict and per-feature metrics, the report and JSON as artifacts, and
    # tags on the version pointing at it.
    registry = Registry(home=home)
    run = registry.client.get_run(clean.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raymlops.monitor.verdict"] == "no drift"
    assert run.data.metrics["dataset_drift"] == 0.0
    assert run.data.metrics["rows_compared"] == 3000
    assert "drift.f0.wasserstein" in run.data.metrics
    assert "kpi.v2.challenger.error_rate" in run.data.metrics
    artifacts = {a.path for a in registry.client.list_artifacts(clean.run_id, "monitor")}
    assert artifacts == {"monitor/clean.html", "monitor/clean.json"}
    history = registry.client.get_metric_history(clean.run_id, "window.v1.champion.requests")
    assert sum(m.value for m in history) == 3000
    tags = registry.version_info(MODEL, 1).tags
    assert tags["raymlops.monitor.last_run_id"] == clean.run_id
    assert tags["raymlops.monitor.last_verdict"] == "no drift"

    # The same traffic with every numeric feature shifted by half a standard deviation.
    shifted = tmp_path / "shifted"
    write_log(shifted, 3000, drift=0.5, seed=3)
    result = run_monitor(
        _config(home), source=str(shifted), home=home, log_to_mlflow=False, echo=False
    )
    assert result.verdict == "drift" and result.drift_detected is True
    assert all(_drifted(result)[name] for name in ("f0", "f1", "f2", "f3"))
    assert result.run_id is None
    assert result.report_path is not None and result.report_path.parent == (
        home / "reports" / MODEL
    )


def test_since_keeps_only_recent_rows(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    now = datetime.now(timezone.utc)
    write_log(log, 2500, drift=1.0, start=now - timedelta(days=3), seed=4)  # old, shifted
    write_log(log, 2000, start=now - timedelta(hours=5), hours=4, seed=5)  # recent, clean
    config = _config(home, log_to_mlflow=False)

    recent = run_monitor(config, source=str(log), since="1d", home=home, echo=False)
    assert recent.rows_read == 2000
    assert recent.verdict == "no drift"
    assert recent.since is not None and recent.period is not None
    assert recent.period[0] >= recent.since

    everything = run_monitor(config, source=str(log), home=home, echo=False)
    assert everything.rows_read == 4500
    assert everything.verdict == "drift"

    start = (now - timedelta(days=3, hours=1)).strftime("%Y-%m-%d")
    by_date = run_monitor(config, source=str(log), since=start, home=home, echo=False)
    assert by_date.rows_read == 4500


def test_files_compacted_away_after_the_listing_are_read_in_the_merged_file(
    tmp_path: Path,
) -> None:
    """A compaction between the listing and the Ray pass deletes the listed files: the
    error comes back from the Ray task as FileGone (not a bare DataError), and the monitor's
    scan lists again and reads every row once from the merged file."""
    from raymlops.data.log_compaction import compact_log
    from raymlops.monitor.run import _scan
    from raymlops.monitor.scan import FileGone, _list_source, run_pass
    from raymlops.monitor.summary import _Plan

    log = tmp_path / "log"
    for seed in range(4):
        write_log(log, 300, seed=seed)
    plan = _Plan({}, [], None, False, 1, None, 3_600_000_000, 1000)
    listed = _list_source(str(log))
    assert len(listed.files) == 4
    assert compact_log(str(log)).files_in == 4
    with pytest.raises(FileGone):
        run_pass(listed, plan)
    assert _scan(str(log), listed, plan, None, False).rows_read == 1200


def test_labels_joined_by_request_id_give_metrics_per_window(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    rows = write_log(log, 2400, hours=4, seed=6)
    labelled = rows.slice(0, 1800)
    labels = tmp_path / "labels.csv"
    pacsv.write_csv(labelled.select(["request_id", "label"]), labels)
    result = run_monitor(
        _config(home, log_to_mlflow=False),
        source=str(log),
        labels=str(labels),
        home=home,
        echo=False,
    )
    (overall,) = result.performance
    assert overall.version == 1 and overall.rows == 1800
    truth = labelled.column("label").to_numpy()
    predicted = np.array([int(p) for p in labelled.column("prediction").to_pylist()])
    assert overall.metrics["accuracy"] == pytest.approx(float(np.mean(truth == predicted)))
    assert {"accuracy", "f1_macro", "log_loss", "roc_auc"} <= set(overall.metrics)
    assert sum(w.rows for w in result.performance_windows) == 1800
    assert len(result.performance_windows) >= 3
    assert result.report_path is not None
    assert "Performance on labelled requests" in result.report_path.read_text()


def test_a_csv_dataset_small_samples_and_tiny_windows(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "traffic.csv"
    synth_dataset(str(source), 400, features=4, categorical=1, seed=7, drift=0.0)
    config = _config(home, log_to_mlflow=False)
    small = run_monitor(config, source=str(source), home=home, echo=False)
    assert small.rows_compared == 400
    assert {f.method for f in small.features} == {"ks", "chi2"}
    assert small.verdict == "no drift"
    assert small.kpis == [] and small.source_kind == "dataset"  # no requests: no KPIs
    tiny = tmp_path / "tiny.csv"
    synth_dataset(str(tiny), 50, features=4, categorical=1, seed=8, drift=2.0)
    result = run_monitor(config, source=str(tiny), home=home, echo=False)
    assert result.verdict == "no verdict" and result.drift_detected is False
    assert all(f.drifted is None for f in result.features)


def test_cli_prints_the_verdict_and_exit_codes(home: Path, tmp_path: Path) -> None:
    shifted = tmp_path / "shifted"
    write_log(shifted, 2500, drift=0.5, seed=9)
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(
        f"name: {MODEL}\n"
        f"data: {{path: {home / 'train.parquet'}, label: label, id_columns: [id]}}\n"
        f"registry: {{model_name: {MODEL}, experiment: {MODEL}}}\n"
    )
    base = ["monitor", "-c", str(config_file), "--home", str(home), "--no-mlflow"]
    runner = CliRunner()

    result = runner.invoke(
        cli, [*base, "--source", str(shifted), "--report", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 0, result.output
    assert f"{MODEL} v1: DRIFT" in result.stdout
    assert (tmp_path / "r.html").is_file() and (tmp_path / "r.json").is_file()

    result = runner.invoke(cli, [*base, "--source", str(shifted), "--fail-on-drift"])
    assert result.exit_code == 1
    assert "error: drift detected in mon v1: f0" in result.stderr

    result = runner.invoke(cli, [*base, "--source", str(shifted), "--json", "--version", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verdict"] == "drift" and data["version"] == 1

    for args, message in [
        (["--since", "last tuesday"], "invalid --since 'last tuesday'"),
        (["--source", str(tmp_path / "missing")], "data not found"),
        (["--source", str(shifted), "--version", "9"], "has no version 9"),
        (["--source", str(shifted), "--labels", str(config_file)], "no Parquet or CSV files"),
        (["--home", str(tmp_path / "empty")], "no prediction log for 'mon'"),
        (["--set", "monitor.drift_share=2"], "monitor.drift_share"),
    ]:
        result = runner.invoke(cli, [*base, *args])
        assert result.exit_code == 2, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert "Traceback" not in result.output

    not_numeric = tmp_path / "not-numeric.csv"
    table = load_table(str(shifted)).slice(0, 300)
    table = table.set_column(table.column_names.index("f1"), "f1", pa.array(["abc"] * 300))
    pacsv.write_csv(table, not_numeric)
    result = runner.invoke(cli, [*base, "--source", str(not_numeric)])
    assert result.exit_code == 2, result.output
    assert "error: feature column 'f1' is not numeric" in result.stderr

    corrupt = tmp_path / "corrupt" / "part-0.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PAR1 this is not parquet")
    result = runner.invoke(cli, [*base, "--source", str(corrupt.parent)])
    assert result.exit_code == 2, result.output
    assert "cannot read" in result.stderr

    lacking = tmp_path / "lacking.parquet"
    pq.write_table(load_table(str(shifted)).drop_columns(["f2"]), lacking)
    result = runner.invoke(cli, [*base, "--source", str(lacking)])
    assert result.exit_code == 2
    assert "lacks feature column(s) of mon v1: f2" in result.stderr

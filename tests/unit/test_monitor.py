"""Tests of raymlops.monitor.run without Ray: time arguments, the per-block summary and its
merging, KPIs, labelled metrics, the result's JSON and terminal forms, the HTML report and
the `monitor` config section. The Ray Data pass itself is tested in
tests/integration/test_monitor.py."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from raymlops.core.config import MonitorConfig, load_config
from raymlops.core.errors import ConfigError, DataError
from raymlops.data.dataset import ColumnRoles, profile_table
from raymlops.model.metrics import classification_metrics
from raymlops.monitor.drift import CategoricalReference, DriftSettings, NumericReference
from raymlops.monitor.kpis import _kpis, _performance, _Reference
from raymlops.monitor.report import render_html
from raymlops.monitor.result import MonitorResult, parse_since
from raymlops.monitor.run import _assemble, parse_duration
from raymlops.monitor.summary import _Partial, _Plan, summarise_block

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
HOUR_US = 3_600_000_000
ROLES = ColumnRoles("label", "classification", ["f0", "f1"], ["c0"], [], ["0", "1"])


def _training(rng: np.random.Generator, n: int = 3000) -> pa.Table:
    return pa.table(
        {
            "f0": rng.normal(0, 1, n),
            "f1": rng.exponential(1.0, n).astype(np.float32),
            "c0": rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2]),
            "label": rng.integers(0, 2, n),
        }
    )


def _log(
    rng: np.random.Generator,
    n: int,
    *,
    shift: float = 0.0,
    version: int = 1,
    role: str = "champion",
    start: datetime = NOW - timedelta(hours=3),
    hours: float = 3.0,
    errors: bool = False,
) -> pa.Table:
    """Rows in the prediction log's format (serving writes exactly these columns)."""
    offsets = np.sort(rng.uniform(0, hours * 3600e6, n)).astype("timedelta64[us]")
    stamps = np.datetime64(start.replace(tzinfo=None), "us") + offsets
    label = rng.integers(0, 2, n)
    p1 = np.clip(label * 0.7 + rng.uniform(0, 0.3, n), 0, 1)
    cols: dict[str, Any] = {
        "request_id": [f"r{version}-{i}-{rng.integers(1 << 40)}" for i in range(n)],
        "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "model_name": ["m"] * n,
        "model_version": pa.array(np.full(n, version, np.int64)),
        "role": [role] * n,
        "latency_ms": rng.lognormal(1.0, 0.5, n),
        "f0": rng.normal(shift, 1, n),
        "f1": rng.exponential(1.0, n).astype(np.float32),
        "c0": rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2]),
        "prediction": [str(v) for v in (p1 > 0.5).astype(int)],
        "proba_0": 1 - p1,
        "proba_1": p1,
    }
    if errors:
        cols["error"] = pa.array([("boom" if i % 10 == 0 else None) for i in range(n)], pa.string())
    return pa.table(cols)


@pytest.fixture(scope="module")
def reference() -> _Reference:
    profile = profile_table(_training(np.random.default_rng(0)), ROLES)
    numeric = {k: NumericReference.from_profile(profile["columns"][k]) for k in ("f0", "f1")}
    return _Reference(
        version=1,
        profile=profile,
        dataset={"task": "classification", "classes": ["0", "1"]},
        numeric={k: v for k, v in numeric.items() if v is not None},
        categorical={"c0": CategoricalReference.from_profile(profile["columns"]["c0"])},
        prediction=CategoricalReference.from_profile(profile["label"]),
        prediction_source="training labels",
    )


def _plan(reference: _Reference, **changes: Any) -> _Plan:
    values: dict[str, Any] = {
        "numeric": {k: v.edges for k, v in reference.numeric.items()},
        "categorical": list(reference.categorical),
        "prediction_edges": None,
        "prediction_categorical": True,
        "version": 1,
        "since_us": None,
        "window_us": HOUR_US,
        "sample_cap": 1000,
    }
    values.update(changes)
    return _Plan(**values)


def _result(reference: _Reference, partial: _Partial, plan: _Plan) -> MonitorResult:
    return _assemble(
        partial, reference, DriftSettings(), "m", "log/", None, "1h", HOUR_US, plan,
        "classification", ["0", "1"],
    )  # fmt: skip


def _assert_close(a: Any, b: Any) -> None:
    """Equal, floats up to summation order."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
    else:
        assert a == b


# --------------------------------------------------------------------------- time


def test_parse_since_accepts_durations_dates_and_datetimes() -> None:
    assert parse_since("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_since("1d", now=NOW) == NOW - timedelta(days=1)
    assert parse_since("30m", now=NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2026-03-01") == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert parse_since("2026-03-01T06:30Z") == datetime(2026, 3, 1, 6, 30, tzinfo=timezone.utc)
    assert parse_since("2026-03-01T08:30+02:00") == datetime(2026, 3, 1, 6, 30, tzinfo=timezone.utc)
    assert parse_since(None) is None
    assert parse_duration("1w") == timedelta(days=7)
    for bad in ("yesterday", "2x", "-1d"):
        with pytest.raises(DataError, match="invalid"):
            parse_since(bad)
    with pytest.raises(DataError, match="invalid duration '0h'"):
        parse_duration("0h")


# --------------------------------------------------------------------------- block summary


def test_block_summaries_merge_to_the_summary_of_the_whole(reference: _Reference) -> None:
    rng = np.random.default_rng(1)
    table = pa.concat_tables(
        [_log(rng, 3000), _log(rng, 500, version=2, role="challenger")]
    ).combine_chunks()
    plan = _plan(reference)
    whole = summarise_block(table, plan)
    merged = _Partial()
    for start in range(0, table.num_rows, 700):
        merged.merge(summarise_block(table.slice(start, 700), plan))
    assert whole.rows_read == merged.rows_read == 3500
    assert whole.rows_compared == merged.rows_compared == 3000  # version 1's rows only
    for name in ("f0", "f1"):
        np.testing.assert_array_equal(whole.numeric[name].counts, merged.numeric[name].counts)
        assert whole.numeric[name].n == 3000
    assert whole.categorical["c0"].counts == merged.categorical["c0"].counts
    assert sum(whole.categorical["c0"].counts.values()) == 3000
    a = _result(reference, whole, plan)
    b = _result(reference, merged, plan)
    _assert_close([f.to_dict() for f in a.features], [f.to_dict() for f in b.features])
    assert [k.to_dict() for k in a.kpis] == [k.to_dict() for k in b.kpis]
    assert [k.to_dict() for k in a.kpi_windows] == [k.to_dict() for k in b.kpi_windows]


def test_since_drops_older_rows_and_kpis_count_every_version(reference: _Reference) -> None:
    rng = np.random.default_rng(2)
    old = _log(rng, 1000, start=NOW - timedelta(days=3), shift=2.0)
    new = _log(rng, 1200)
    challenger = _log(rng, 300, version=2, role="challenger", errors=True)
    table = pa.concat_tables([old, new, challenger], promote_options="default")
    plan = _plan(reference, since_us=int((NOW - timedelta(days=1)).timestamp() * 1e6))
    result = _result(reference, summarise_block(table, plan), plan)
    assert result.rows_read == 1500
    assert result.rows_compared == 1200
    assert result.verdict == "no drift"
    assert result.period is not None and result.period[0] >= NOW - timedelta(days=1)
    kpis = {(k.version, k.role): k for k in result.kpis}
    assert set(kpis) == {(1, "champion"), (2, "challenger")}
    assert kpis[(1, "champion")].requests == 1200
    assert kpis[(2, "challenger")].requests == 300
    assert kpis[(2, "challenger")].errors == 30
    assert kpis[(2, "challenger")].error_rate == pytest.approx(0.1)
    assert kpis[(1, "champion")].errors == 0  # the column exists, with no error for v1
    windows = [k for k in result.kpi_windows if k.version == 1]
    assert sum(k.requests for k in windows) == 1200
    assert all(k.window_start is not None and k.window_start.minute == 0 for k in windows)
    # Without `since` the old, shifted rows count and f0 drifts.
    everything = _result(reference, summarise_block(table, _plan(reference)), _plan(reference))
    assert everything.rows_compared == 2200
    assert {f.name: f.drifted for f in everything.features}["f0"] is True


def test_latency_quantiles_are_within_two_percent(reference: _Reference) -> None:
    rng = np.random.default_rng(3)
    table = _log(rng, 20_000)
    latency = table.column("latency_ms").to_numpy()
    partial = summarise_block(table, _plan(reference))
    overall, _ = _kpis(partial, HOUR_US)
    (row,) = overall
    assert row.errors is None and row.error_rate is None  # no error column in this log
    assert row.latency_p50_ms == pytest.approx(np.quantile(latency, 0.5), rel=0.02)
    assert row.latency_p95_ms == pytest.approx(np.quantile(latency, 0.95), rel=0.02)


def test_a_dataset_without_log_columns_still_compares(reference: _Reference) -> None:
    table = _training(np.random.default_rng(4), 800).drop_columns(["label"])
    # As run_monitor plans it for a source without predictions.
    plan = _plan(reference, prediction_categorical=False)
    result = _result(reference, summarise_block(table, plan), plan)
    assert result.rows_compared == 800
    assert result.period is None
    assert result.verdict == "no drift"
    assert [f.name for f in result.features] == ["f0", "f1", "c0"]  # no prediction column


def test_tiny_window_gives_no_verdict(reference: _Reference) -> None:
    plan = _plan(reference)
    result = _result(
        reference, summarise_block(_log(np.random.default_rng(5), 40, shift=3), plan), plan
    )
    assert result.verdict == "no verdict"
    assert result.drift_detected is False
    assert all(f.drifted is None for f in result.features)


def test_labelled_rows_give_metrics_overall_and_per_window(reference: _Reference) -> None:
    rng = np.random.default_rng(6)
    table = _log(rng, 2000)
    truth = rng.integers(0, 2, 2000)
    labels = pa.table({"request_id": table.column("request_id"), "__label__": truth})
    plan = _plan(reference, labels=labels.slice(0, 1500), proba_columns=["proba_0", "proba_1"])
    partial = summarise_block(table, plan)
    assert partial.labelled is not None and partial.labelled.num_rows == 1500
    result = _result(reference, partial, plan)
    (overall,) = result.performance
    assert overall.rows == 1500 and overall.version == 1
    probs = np.column_stack(
        [table.column("proba_0").to_numpy()[:1500], table.column("proba_1").to_numpy()[:1500]]
    )
    expected = classification_metrics(truth[:1500], probs, 2)
    for key, value in expected.items():
        assert overall.metrics[key] == pytest.approx(value)
    assert sum(w.rows for w in result.performance_windows) == 1500
    assert len(result.performance_windows) >= 3  # three hours of traffic


def test_performance_of_regression_predictions() -> None:
    labelled = pa.table(
        {
            "prediction": [1.0, 2.0, 3.0, 4.0],
            "__ts__": np.array([0, 1, HOUR_US, HOUR_US + 5], np.int64),
            "__label__": [1.5, 2.0, 2.0, 4.0],
            "__version__": [3, 3, 3, 3],
        }
    )
    overall, windows = _performance(labelled, "regression", None, HOUR_US)
    assert overall[0].metrics["mae"] == pytest.approx(0.375)
    assert [w.rows for w in windows] == [2, 2]


# --------------------------------------------------------------------------- outputs


def test_result_json_summary_and_self_contained_report(reference: _Reference) -> None:
    rng = np.random.default_rng(7)
    table = pa.concat_tables(
        [_log(rng, 4000, shift=0.5), _log(rng, 600, version=2, role="challenger")]
    )
    plan = _plan(reference)
    result = _result(reference, summarise_block(table, plan), plan)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["verdict"] == result.verdict
    assert data["drift_detected"] is result.drift_detected
    assert [f["name"] for f in data["features"]] == ["f0", "f1", "c0", "prediction"]
    assert data["features"][0]["drifted"] is True
    assert data["settings"]["numeric_threshold"] == 0.1
    summary = result.summary()
    assert summary.splitlines()[0].startswith(f"m v1: {result.verdict.upper()}")
    assert re.search(r"f0\s+numeric\s+wasserstein", summary)
    assert "challenger" in summary
    page = render_html(result)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("data:image/png;base64,") >= 3  # scores, distributions, KPIs
    assert "<script" not in page and 'src="http' not in page
    assert "f0" in page and "DRIFT" in page


def test_report_of_an_empty_log(reference: _Reference) -> None:
    plan = _plan(reference)
    result = _result(reference, _Partial(), plan)
    assert result.verdict == "no verdict" and result.rows_read == 0
    page = render_html(result)
    assert "no rows" in page
    json.dumps(result.to_dict(), allow_nan=False)


# --------------------------------------------------------------------------- config


def test_monitor_config_section_is_validated(tmp_path: Path) -> None:
    defaults = MonitorConfig()
    assert (defaults.numeric_threshold, defaults.drift_share, defaults.min_samples) == (
        0.1,
        0.5,
        100,
    )
    for field_name, info in MonitorConfig.model_fields.items():
        assert info.description, field_name
    base = "name: p\ndata: {path: x.parquet, label: y}\nregistry: {model_name: m}\n"
    cases = {
        "monitor: {drift_shares: 0.3}\n": "monitor.drift_shares: unknown key",
        "monitor: {window: soon}\n": "invalid duration 'soon'",
        "monitor: {min_samples: 500, large_sample: 100}\n": "large_sample (100) must be at least",
        "monitor: {drift_share: 1.5}\n": "monitor.drift_share",
    }
    for extra, message in cases.items():
        path = tmp_path / "p.yaml"
        path.write_text(base + extra)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path)
    path = tmp_path / "ok.yaml"
    path.write_text(base + "monitor: {since: 1d, window: 30m, labels: labels.csv}\n")
    config = load_config(path)
    assert config.monitor.since == "1d" and config.monitor.window == "30m"


# --------------------------------------------------------------------------- read units


def test_few_large_files_are_cut_into_row_group_ranges(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from raymlops.monitor.scan import _list_source, _read_unit, _Unit, _units

    table = _log(np.random.default_rng(8), 8000)
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=1000)  # 8 row groups
    source = _list_source(str(tmp_path / "big.parquet"))
    columns = {source.files[0]: ["timestamp", "f0", "missing_column"]}
    units = _units(source, columns, wanted=4)
    assert [u.row_groups for u in units] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    parts = [_read_unit(u, source.filesystem, source.format) for u in units]
    assert all(p.column_names == ["timestamp", "f0"] for p in parts)
    assert pa.concat_tables(parts).column("f0").equals(table.column("f0"))
    # As many files as tasks: whole files.
    for i in range(3):
        pq.write_table(table.slice(i * 100, 100), tmp_path / f"part-{i}.parquet")
    (tmp_path / "big.parquet").unlink()
    source = _list_source(str(tmp_path))
    units = _units(source, {f: ["f0"] for f in source.files}, wanted=2)
    assert [u.row_groups for u in units] == [None, None, None]
    bad = tmp_path / "part-9.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"cannot read .*part-9\.parquet"):
        _read_unit(_Unit(str(bad), ("f0",), 1), source.filesystem, "parquet")


def test_dictionary_encoded_strings_count_like_plain_ones() -> None:
    from raymlops.monitor.drift import CategoricalSketch
    from raymlops.monitor.summary import _codes

    values = ["champion", None, "shadow", "champion", "canary", "challenger"]
    plain = pa.chunked_array([pa.array(values[:3]), pa.array(values[3:])])
    encoded = pa.chunked_array(
        [pa.array(values[:3]).dictionary_encode(), pa.array(values[3:]).dictionary_encode()]
    )
    roles = ("champion", "challenger", "shadow")
    np.testing.assert_array_equal(_codes(plain, roles), [0, 3, 2, 0, 3, 1])
    np.testing.assert_array_equal(_codes(encoded, roles), [0, 3, 2, 0, 3, 1])
    a, b = CategoricalSketch(), CategoricalSketch()
    a.update(plain)
    b.update(encoded)
    assert a.counts == b.counts == {"champion": 2, "shadow": 1, "canary": 1, "challenger": 1}
    assert a.missing == b.missing == 1


def test_a_tsv_source_is_split_on_tabs_like_everywhere_else(tmp_path: Path) -> None:
    """Monitoring reads files through the data package's reader: a .tsv is tab-separated
    (its own copy used to read every file as comma-separated)."""
    from raymlops.monitor.scan import _list_source, _read_unit, _schema_names, _Unit

    path = tmp_path / "recent.tsv"
    path.write_text("f0\tc0\tprediction\n1.5\ta\tyes\n2.5\tb\tno\n")
    files = _list_source(str(path))
    assert files.format == "csv"
    assert _schema_names(files) == ["f0", "c0", "prediction"]
    unit = _Unit(files.files[0], ("f0", "c0"), path.stat().st_size)
    table = _read_unit(unit, files.filesystem, files.format)
    assert table.column_names == ["f0", "c0"]
    assert table.column("f0").to_pylist() == [1.5, 2.5]


def test_a_report_goes_where_it_was_asked_else_to_shared_storage_else_home(
    reference: _Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raymlops.monitor.record import report_location

    monkeypatch.delenv("RAYMLOPS_STORAGE", raising=False)

    plan = _plan(reference)
    result = _result(reference, summarise_block(_log(np.random.default_rng(1), 200), plan), plan)
    name = f"monitor-v1-{result.generated_at:%Y%m%d-%H%M%S}.html"
    home = tmp_path / "home"
    assert report_location(result, "s3://b/r.html", home, None) == "s3://b/r.html"
    assert report_location(result, tmp_path / "r.html", home, "s3://b") == str(tmp_path / "r.html")
    # A cluster's job writes where the laptop reads: the shared storage, not a node's disk.
    assert report_location(result, None, home, "s3://b/rmo/") == f"s3://b/rmo/reports/m/{name}"
    assert report_location(result, None, home, None) == str(home / "reports" / "m" / name)


def test_the_row_sample_is_uniform_over_duplicate_rows_and_the_same_however_read(
    reference: _Reference, tmp_path: Path
) -> None:
    """The sample a dataset's predictions are made over: 30,000 rows of three 3-valued
    columns (27 distinct rows, each ~1,111 times). Keyed by a hash of the values, every copy
    of a row shared a key and the 5,000 smallest keys held only a few distinct rows; keyed
    by the row's place in its file, every combination is there in its proportion, and whole
    files or row-group ranges give the same sample."""
    import pyarrow.parquet as pq

    from raymlops.monitor.scan import _list_source, _read_unit, _units
    from raymlops.monitor.summary import _KEY

    rng = np.random.default_rng(4)
    n = 30_000
    table = pa.table(
        {
            "f0": rng.integers(0, 3, n).astype(np.float64),
            "f1": rng.integers(0, 3, n).astype(np.float32),
            "c0": rng.choice(["a", "b", "c"], size=n),
        }
    )
    for i in range(3):
        pq.write_table(table.slice(i * 10_000, 10_000), tmp_path / f"part-{i}.parquet",
                       row_group_size=2_500)  # fmt: skip
    plan = _plan(reference, row_sample=5000)
    source = _list_source(str(tmp_path))
    columns = {f: plan.columns(True) for f in source.files}

    def sample(wanted: int) -> pa.Table:
        merged = _Partial()
        for unit in _units(source, columns, wanted):
            merged.merge(summarise_block(_read_unit(unit, source.filesystem, "parquet"), plan))
        assert merged.sample is not None
        return merged.sample.sort_by(_KEY)

    whole, pieces = sample(1), sample(12)  # 3 whole files; 12 ranges of row groups
    assert whole.num_rows == 5000
    assert whole.equals(pieces)
    rows = whole.drop_columns([_KEY]).to_pandas().value_counts()
    assert len(rows) == 27
    assert rows.max() / 5000 < 2 / 27 and rows.min() / 5000 > 0.5 / 27  # ~185 each


def _local_pass(files: Any, plan: _Plan, mask: list[bool], show_progress: bool = False) -> _Partial:
    """What the Ray Data pass's tasks do, in this process: read each unit, summarise, merge."""
    from raymlops.monitor.scan import _read_unit, _units

    merged = _Partial()
    columns = {f: plan.columns(m) for f, m in zip(files.files, mask, strict=True)}
    for unit in _units(files, columns, 1):
        merged.merge(summarise_block(_read_unit(unit, files.filesystem, files.format), plan))
    return merged


def test_files_a_compaction_deletes_during_the_pass_are_listed_again(
    reference: _Reference, tmp_path: Path
) -> None:
    """A compaction merges the listed files (and deletes them) between the listing and the
    reads: the monitor lists again and reads the merged file, every row once; a file that
    keeps vanishing gives up with a clear error after SCAN_ATTEMPTS passes."""
    import pickle

    import pyarrow.parquet as pq

    from raymlops.data.log_compaction import compact_log
    from raymlops.monitor.run import SCAN_ATTEMPTS, _scan
    from raymlops.monitor.scan import FileGone, _list_source

    root = tmp_path / "m"
    folder = root / "date=2026-03-10" / "version=1"
    folder.mkdir(parents=True)
    table = _log(np.random.default_rng(6), 600)
    for i in range(6):
        pq.write_table(table.slice(i * 100, 100), folder / f"part-{i}.parquet")
    plan = _plan(reference)
    listed: list[list[str]] = []

    def compacted_first(files: Any, plan: _Plan, mask: list[bool], **kw: Any) -> _Partial:
        if not listed:
            assert compact_log(str(root)).files_in == 6  # the listed files are gone
        listed.append(files.files)
        return _local_pass(files, plan, mask, **kw)

    partial = _scan(str(root), _list_source(str(root)), plan, None, False, compacted_first)
    assert [len(f) for f in listed] == [6, 1]
    assert partial.rows_read == partial.rows_compared == 600
    assert partial.categorical["c0"].n == 600

    def compacted_always(files: Any, plan: _Plan, mask: list[bool], **kw: Any) -> _Partial:
        n = len(list(folder.iterdir()))
        pq.write_table(table.slice(0, 10), folder / f"part-new-{n}.parquet")
        assert compact_log(str(root)).files_in >= 2
        return _local_pass(files, plan, mask, **kw)

    with pytest.raises(DataError, match=f"files kept vanishing during {SCAN_ATTEMPTS} passes"):
        _scan(str(root), _list_source(str(root)), plan, None, False, compacted_always)
    # From a Ray task the error comes back pickled: as itself, file included.
    gone = pickle.loads(pickle.dumps(FileGone("/log/part-0.parquet", "no such file")))
    assert isinstance(gone, FileGone) and gone.file == "/log/part-0.parquet"
    assert str(gone) == "cannot read /log/part-0.parquet: no such file"


def test_feature_rules_are_checked_against_the_versions_columns(reference: _Reference) -> None:
    """What run_monitor checks before reading: each `monitor.features` key names a compared
    column (a typo used to be silently never applied), with a method of its kind (chi2 on
    a numeric feature used to fail only after the whole pass)."""
    from raymlops.monitor.drift import FeatureRule, check_feature_rules
    from raymlops.monitor.run import _column_kinds

    kinds = _column_kinds(reference)
    assert kinds == {"f0": "numeric", "f1": "numeric", "c0": "categorical",
                     "prediction": "categorical"}  # fmt: skip
    good = {"f0": FeatureRule("ks"), "c0": FeatureRule("chi2", 0.01)}
    check_feature_rules({**good, "prediction": FeatureRule("psi")}, kinds, "m v1")
    with pytest.raises(
        DataError,
        match=r"monitor.features.cO: 'cO' is not a monitored column "
        r"of m v1 \(did you mean 'c0'\?\); its columns: c0, f0, f1, prediction",
    ):
        check_feature_rules({**good, "cO": FeatureRule("chi2")}, kinds, "m v1")  # fmt: skip
    with pytest.raises(
        DataError,
        match=r"monitor.features.f1.method 'chi2' does not apply "
        "to a numeric feature",
    ):
        check_feature_rules({"f1": FeatureRule("chi2")}, kinds, "m v1")  # fmt: skip
    with pytest.raises(DataError, match=r"monitor.features.prediction.method 'ks'"):
        check_feature_rules({"prediction": FeatureRule("ks")}, kinds, "m v1")

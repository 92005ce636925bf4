"""Drift monitoring throughput: `raymlops monitor` (Ray Data) vs plain pandas + scipy.

Workload: a prediction log in serving's layout (Parquet, `date=…/version=…/part-*.parquet`)
of N rows (1,000,000 by default) over two days — 90% served by the champion (v1), 10% by a
challenger (v2) — with 16 numeric and 2 categorical input features, the prediction, two
class probabilities and the log's meta columns (request id, UTC timestamp, model name and
version, role, latency). Half of the rows have drifted inputs (`synth --drift 0.3`).

(a) `raymlops.monitor.run.run_monitor(config, …)`: the function `raymlops monitor` calls, on
    a local Ray with 2 CPUs (started once, timed separately), without writing the HTML
    report or logging to MLflow (neither has a counterpart in (b); both are timed once at the
    end). It reads v1's training profile from the registry, scans the log with Ray Data
    (column-pruned reads, one summary per block, merged on the driver) and computes every
    statistic: per-feature drift, KPIs per version and hour.
(b) the same statistics in one process with pandas + scipy: `pd.read_parquet` of the same
    files and columns, a `since` filter, KPIs with pandas `groupby` (exact latency
    quantiles), per-feature bin counts with `np.histogram` on the profile's bin edges and
    category counts with `value_counts`, then the same scipy-based statistics
    (`raymlops.monitor.drift.numeric_drift` / `categorical_drift`, i.e. scipy's Jensen–Shannon,
    chi-square and KS distributions) on those counts.

Both get the same `since` (the whole log) and must agree: same verdicts per feature,
statistics within 1e-9, request counts equal. Each side runs `--repeat` times, alternating;
the figure is the median. rows/s = log rows / wall time.

Prints the figures and, as its last line, one JSON object with `ratio` ((a) rows/s ÷ (b)
rows/s; ≥ 1 means raymlops is faster).

    python benchmarks/monitor_throughput.py            # 1M rows, 5 repetitions
    python benchmarks/monitor_throughput.py --quick    # 1M rows, 3 repetitions (< 3 min)
    python benchmarks/monitor_throughput.py --files 2000   # serving-like small part files
    python benchmarks/monitor_throughput.py --files 2000 --compact

With `--compact` the log is compacted first (`raymlops.data.log_compaction`, what serving
replicas do every hour and `raymlops log compact` does on demand; timed, not in the ratio):
(a) reads the compacted log, (b) an uncompacted copy of it — what a user without raymlops'
compaction reads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raymlops.core.config import PipelineConfig
from raymlops.data.dataset import load_dataset, load_table, synth_dataset
from raymlops.monitor.drift import (
    CategoricalReference,
    CategoricalSketch,
    DriftSettings,
    FeatureDrift,
    NumericReference,
    NumericSketch,
    categorical_drift,
    numeric_drift,
)

DATA = Path(__file__).resolve().parent / ".data"
FEATURES = 16
CATEGORICAL = 2
MODEL = "bench-monitor"


def _config(home: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": MODEL,
            "data": {"path": str(home / "train.parquet"), "label": "label", "id_columns": ["id"]},
            "registry": {"model_name": MODEL, "experiment": MODEL},
            "monitor": {"log_to_mlflow": False},
        }
    )


def _register(home: Path) -> tuple[PipelineConfig, Any]:
    """Version 1 of the benchmark model (untrained weights: only its profile matters here)."""
    from raymlops.model.architectures import build_model
    from raymlops.model.features import Preprocessor
    from raymlops.model.predictor import Predictor
    from raymlops.registry.store import Registry
    from raymlops.train.loop import architecture_spec

    config = _config(home)
    registry = Registry(home=home)
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    model = build_model("mlp", config.model.params, prep.n_outputs, prep.n_targets)
    predictor = Predictor(model, prep, architecture_spec(config, prep))
    try:
        registry.version_info(MODEL, 1)
    except Exception:
        with registry.pipeline_run(config, "benchmark") as run_id:
            registry.register(config, run_id, predictor, dataset, {})
    return config, predictor


def _write_log(home: Path, rows: int, files: int, predictor: Any) -> Path:
    """The prediction log: 2 days × (8 champion + 2 challenger chunks), each chunk written
    as `files` / 20 part files; the second day drifted. Columns and types as serving writes
    them (numeric features float64, categorical and prediction strings)."""
    root = home / "predictions" / MODEL
    marker = root / "_complete"
    if marker.exists():
        return root
    start = datetime(2026, 1, 5, tzinfo=timezone.utc)
    rng = np.random.default_rng(0)
    parts = [(day, 1, i) for day in range(2) for i in range(8)]
    parts += [(day, 2, i) for day in range(2) for i in range(2)]
    per_part = rows // len(parts)
    for k, (day, version, _) in enumerate(parts):
        n = per_part if k < len(parts) - 1 else rows - per_part * (len(parts) - 1)
        src = home / "part-src.parquet"
        synth_dataset(
            str(src), n, FEATURES, CATEGORICAL, drift=0.3 if day == 1 else 0.0, seed=100 + k
        )
        table = load_table(str(src))
        pred = predictor.predict(table).to_frame()
        offsets = np.sort(rng.uniform(0, 86400e6, n)).astype("timedelta64[us]")
        stamps = np.datetime64((start + timedelta(days=day)).replace(tzinfo=None), "us") + offsets
        cols: dict[str, Any] = {
            "request_id": [uuid.UUID(int=int(x)).hex for x in rng.integers(0, 2**62, n)],
            "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
            "model_name": pa.array([MODEL] * n),
            "model_version": pa.array(np.full(n, version, np.int64)),
            "role": pa.array(["champion" if version == 1 else "challenger"] * n),
            "latency_ms": rng.lognormal(1.0, 0.6, n),
        }
        for c in table.column_names:
            if c.startswith("f"):
                cols[c] = table.column(c).cast(pa.float64())
            elif c.startswith("c"):
                cols[c] = table.column(c)
        cols["prediction"] = pa.array(pred["prediction"].astype(str).tolist())
        for c in pred.columns[1:]:
            cols[c] = pred[c].to_numpy()
        log = pa.table(cols)
        date = (start + timedelta(days=day)).strftime("%Y-%m-%d")
        folder = root / f"date={date}" / f"version={version}"
        folder.mkdir(parents=True, exist_ok=True)
        pieces = max(1, files // len(parts))
        bounds = np.linspace(0, n, pieces + 1).astype(int)
        for a, b in itertools.pairwise(bounds):
            pq.write_table(log.slice(a, b - a), folder / f"part-{uuid.uuid4()}.parquet")
        src.unlink()
    marker.write_text("ok")
    return root


# --------------------------------------------------------------------------- baseline


def pandas_monitor(
    root: Path, profile: dict[str, Any], version: int, settings: DriftSettings
) -> dict[str, Any]:
    """(b): the same statistics, single process, pandas + numpy + scipy."""
    files = sorted(str(p) for p in root.rglob("*.parquet"))
    numeric = {c: s for c, s in profile["columns"].items() if s["kind"] == "numeric"}
    categorical = {c: s for c, s in profile["columns"].items() if s["kind"] == "categorical"}
    meta = ["timestamp", "model_version", "role", "latency_ms"]
    frame = pd.read_parquet(files, columns=[*meta, *numeric, *categorical, "prediction"])
    frame = frame[frame["timestamp"] >= pd.Timestamp("2000-01-01", tz="UTC")]  # since
    # KPIs per version and role, overall and per hour (exact quantiles).
    frame["window"] = frame["timestamp"].dt.floor("1h")
    kpis = {}
    for keys in (["model_version", "role"], ["window", "model_version", "role"]):
        grouped = frame.groupby(keys, observed=True)["latency_ms"]
        quantiles = grouped.quantile([0.5, 0.95]).unstack()
        kpis[len(keys)] = pd.DataFrame(
            {"requests": grouped.size(), "p50": quantiles[0.5], "p95": quantiles[0.95]}
        )
    mine = frame[frame["model_version"] == version]
    features: list[FeatureDrift] = []
    for name, stats in numeric.items():
        ref = NumericReference.from_profile(stats)
        assert ref is not None
        values = mine[name].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        edges = ref.edges
        counts, _ = np.histogram(finite, bins=edges)
        sums, _ = np.histogram(finite, bins=edges, weights=finite)
        below, above = finite[finite < edges[0]], finite[finite > edges[-1]]
        sketch = NumericSketch(
            edges,
            counts=np.concatenate([[len(below)], counts, [len(above)]]).astype(np.int64),
            sums=np.concatenate([[below.sum()], sums, [above.sum()]]),
            missing=len(values) - len(finite),
            minimum=float(finite.min()),
            maximum=float(finite.max()),
            sample=finite if len(finite) <= settings.large_sample else None,
            sample_cap=settings.large_sample,
        )
        features.append(numeric_drift(name, ref, sketch, settings))
    for name, stats in categorical.items():
        counts = mine[name].value_counts(dropna=True)
        missing = int(mine[name].isna().sum())
        cat = CategoricalSketch({str(k): int(v) for k, v in counts.items()}, missing)
        reference = CategoricalReference.from_profile(stats)
        features.append(categorical_drift(name, reference, cat, settings))
    counts = mine["prediction"].value_counts(dropna=True)
    pred = CategoricalSketch({str(k): int(v) for k, v in counts.items()})
    label_ref = CategoricalReference.from_profile(profile["label"])
    features.append(categorical_drift("prediction", label_ref, pred, settings, "prediction"))
    return {"rows": len(frame), "features": features, "kpis": kpis}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument(
        "--files",
        type=int,
        default=20,
        help="Part files of the log (serving writes one per flush: try 2000)",
    )
    parser.add_argument("--quick", action="store_true", help="3 repetitions, under 3 minutes")
    parser.add_argument(
        "--compact",
        action="store_true",
        help="(a) reads the log compacted, (b) an uncompacted copy of it",
    )
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 5)

    home = DATA / (f"monitor-{args.rows}-{args.files}" + ("-compacted" if args.compact else ""))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "train.parquet").exists():
        synth_dataset(str(home / "train.parquet"), 20_000, FEATURES, CATEGORICAL, seed=1)
    t0 = time.perf_counter()
    config, predictor = _register(home)
    root = _write_log(home, args.rows, args.files, predictor)
    print(
        f"log: {args.rows} rows in {len(list(root.rglob('*.parquet')))} files "
        f"({time.perf_counter() - t0:.1f} s to prepare)"
    )
    raw, compact_s = root, None
    if args.compact:
        from raymlops.data.log_compaction import compact_log

        raw = home / "uncompacted" / MODEL
        if not raw.exists():
            shutil.copytree(root, raw)
        done = compact_log(str(root))
        compact_s = done.seconds
        print(
            f"compacted: {done.files_in} files into {done.files_out} in {done.seconds:.2f} s "
            f"(now {len(list(root.rglob('*.parquet')))} files; (b) reads the "
            f"{len(list(raw.rglob('*.parquet')))} of the uncompacted copy)"
        )

    from raymlops.cluster.launcher import ray_session
    from raymlops.monitor.run import run_monitor
    from raymlops.registry.store import Registry

    folder, _ = Registry(home=home).download(MODEL, 1)
    settings = DriftSettings()

    t0 = time.perf_counter()
    with ray_session(num_cpus=2):
        ray_start = time.perf_counter() - t0
        ray_times: list[float] = []
        pandas_times: list[float] = []
        result = baseline = None
        for i in range(repeat + 1):  # the first round warms both up and is not counted
            t = time.perf_counter()
            result = run_monitor(
                config, home=home, write_files=False, log_to_mlflow=False, echo=False
            )
            elapsed = time.perf_counter() - t
            if i:
                ray_times.append(elapsed)
            else:
                first_call = elapsed
            t = time.perf_counter()
            profile = json.loads((folder / "profile.json").read_text())
            baseline = pandas_monitor(raw, profile, 1, settings)
            elapsed = time.perf_counter() - t
            if i:
                pandas_times.append(elapsed)
            print(
                f"round {i}: monitor {ray_times[-1] if i else first_call:.2f} s, "
                f"pandas {elapsed:.2f} s" + ("  (warm-up, not counted)" if not i else "")
            )
        assert result is not None and baseline is not None
        # Both must agree.
        assert result.rows_read == baseline["rows"] == args.rows, result.rows_read
        mismatches = []
        for a, b in zip(result.features, baseline["features"], strict=True):
            assert a.name == b.name
            if a.drifted != b.drifted or abs((a.statistic or 0) - (b.statistic or 0)) > 1e-9:
                mismatches.append((a.name, a.statistic, b.statistic))
        assert not mismatches, mismatches
        requests = {(k.version, k.role): k.requests for k in result.kpis}
        expected = {
            (int(v), str(r)): int(n) for (v, r), n in baseline["kpis"][2]["requests"].items()
        }
        assert requests == expected, (requests, expected)
        # Report + MLflow once, for the record (not in the ratio).
        t = time.perf_counter()
        full = run_monitor(config, home=home, log_to_mlflow=True, echo=False)
        with_outputs = time.perf_counter() - t
        scan = result.timings.get("scan", 0.0)

    ray_s, pandas_s = statistics.median(ray_times), statistics.median(pandas_times)
    ray_rate, pandas_rate = args.rows / ray_s, args.rows / pandas_s
    print(
        f"\nRay start-up (not in the ratio): {ray_start:.2f} s; first monitor call "
        f"(cold workers): {first_call:.2f} s"
    )
    print(
        f"(a) raymlops monitor: {ray_s:.2f} s median ({ray_rate:,.0f} rows/s); "
        f"Ray Data scan of the last call {scan:.2f} s"
    )
    print(f"(b) pandas + scipy:   {pandas_s:.2f} s median ({pandas_rate:,.0f} rows/s)")
    print(f"ratio (a)/(b) rows/s: {ray_rate / pandas_rate:.3f}")
    report_s, mlflow_s = full.timings.get("report", 0.0), full.timings.get("mlflow", 0.0)
    print(
        f"verdict {full.verdict}: {len(full.dataset.drifted_features)} of "
        f"{full.dataset.evaluated} drifted; with HTML report + MLflow run: {with_outputs:.2f} s "
        f"(report {report_s:.2f} s, MLflow {mlflow_s:.2f} s)"
    )
    print(
        json.dumps(
            {
                "ratio": round(ray_rate / pandas_rate, 3),
                "rows": args.rows,
                "files": len(list(raw.rglob("*.parquet"))),
                "compacted": args.compact,
                "files_read_by_monitor": len(list(root.rglob("*.parquet"))),
                "compact_s": None if compact_s is None else round(compact_s, 2),
                "monitor_s": round(ray_s, 3),
                "pandas_s": round(pandas_s, 3),
                "monitor_rows_per_s": round(ray_rate),
                "pandas_rows_per_s": round(pandas_rate),
                "ray_startup_s": round(ray_start, 2),
                "first_call_s": round(first_call, 2),
                "repeat": repeat,
            }
        )
    )


if __name__ == "__main__":
    main()

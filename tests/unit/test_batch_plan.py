"""The pure parts of batch inference, without Ray: resource planning, work units, the
manifest, the schema check, the input digest, and one unit processed start to finish by
`process_unit` (read, predict, write atomically, rejects) with a Predictor built here."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from raymlops.batch import worker as batch_worker
from raymlops.batch.plan import (
    InputFile,
    Manifest,
    WorkUnit,
    check_schema,
    input_digest,
    output_schema,
    parse_csv_column_error,
    plan_resources,
    plan_units,
    scan_input,
)
from raymlops.batch.worker import (
    STATS_KEY,
    OutputFolder,
    WorkerSpec,
    find_bad_rows,
    process_unit,
    read_unit_stats,
)
from raymlops.core.config import BatchConfig, PipelineConfig
from raymlops.core.errors import ConfigError, DataError, ResourceError, UserInputError
from raymlops.data.dataset import infer_roles
from raymlops.model.architectures import build_model
from raymlops.model.features import Preprocessor
from raymlops.model.predictor import Predictor

# --------------------------------------------------------------------------- resources


def test_two_cpus_get_two_fractional_actors_that_leave_ray_room() -> None:
    plan = plan_resources({"CPU": 2.0}, pending_units=20)
    assert (plan.actors, plan.cpus_per_actor, plan.torch_threads) == (2, 0.9, 1)
    assert plan.actors * plan.cpus_per_actor < 2.0
    assert plan.gpus_per_actor == 0 and plan.device == "cpu" and plan.batch_size == 65_536


def test_the_pool_is_never_larger_than_the_work() -> None:
    plan = plan_resources({"CPU": 2.0}, pending_units=1)
    # One actor: a whole CPU reserved, both cores for torch.
    assert (plan.actors, plan.cpus_per_actor, plan.torch_threads) == (1, 1.0, 2)
    assert plan_resources({"CPU": 16.0}, pending_units=3).actors == 3


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 7, 16, 64, 96])
def test_auto_pools_never_reserve_every_cpu_and_fit_whole_cpu_nodes(cpus: int) -> None:
    plan = plan_resources({"CPU": float(cpus)}, pending_units=10_000)
    assert plan.actors == cpus
    assert plan.actors * plan.cpus_per_actor <= 0.9 * cpus + 1e-9
    # Any node of n whole CPUs fits n such actors, so the pool spreads over every node.
    assert all(math.floor(n / plan.cpus_per_actor) >= n for n in range(1, cpus + 1))


def test_explicit_actors_and_cpus() -> None:
    plan = plan_resources({"CPU": 8.0}, pending_units=100, actors=3)
    assert plan.actors == 3 and plan.cpus_per_actor == 1.0 and plan.torch_threads == 2
    plan = plan_resources({"CPU": 8.0}, pending_units=100, cpus_per_actor=2.0, torch_threads=2)
    assert (plan.actors, plan.cpus_per_actor, plan.torch_threads) == (4, 2.0, 2)
    with pytest.raises(ResourceError, match=r"batch.actors=4 × batch.cpus_per_actor=3 = 12"):
        plan_resources({"CPU": 8.0}, pending_units=100, actors=4, cpus_per_actor=3.0)
    with pytest.raises(ResourceError, match="cpus_per_actor=9 but the Ray cluster has 8 CPUs"):
        plan_resources({"CPU": 8.0}, pending_units=100, cpus_per_actor=9.0)
    with pytest.raises(ResourceError, match="no CPUs"):
        plan_resources({}, pending_units=1)


def test_gpu_actors_take_one_gpu_each_and_a_larger_batch() -> None:
    plan = plan_resources({"CPU": 8.0, "GPU": 4.0}, pending_units=10, gpus_per_actor=1.0)
    assert (plan.actors, plan.gpus_per_actor, plan.device) == (4, 1.0, "cuda")
    assert plan.batch_size == 262_144 and plan.cpus_per_actor == 1.0
    half = plan_resources({"CPU": 8.0, "GPU": 1.0}, pending_units=10, gpus_per_actor=0.5)
    assert half.actors == 2 and half.gpus_per_actor == 0.5
    custom = plan_resources(
        {"CPU": 4.0, "GPU": 1.0}, pending_units=2, gpus_per_actor=1.0, gpu_batch_size=1024
    )
    assert custom.batch_size == 1024 and custom.actors == 1
    assert "1 GPU" in custom.describe()


def test_gpu_plans_ask_ray_for_gpus_and_cpu_plans_do_not() -> None:
    """What map_batches requests per actor: --gpus 1 becomes num_gpus=1 (and a CUDA device),
    a CPU plan asks for no GPU at all (num_gpus=None, not 0, so Ray's default stands)."""
    gpu = plan_resources({"CPU": 8.0, "GPU": 2.0}, pending_units=10, gpus_per_actor=1.0)
    assert gpu.actor_options() == {"num_cpus": 1.0, "num_gpus": 1.0} and gpu.device == "cuda"
    shared = plan_resources({"CPU": 4.0, "GPU": 1.0}, pending_units=10, gpus_per_actor=0.25)
    assert shared.actors == 4 and shared.actor_options() == {"num_cpus": 0.9, "num_gpus": 0.25}
    cpu = plan_resources({"CPU": 2.0}, pending_units=10)
    assert cpu.actor_options() == {"num_cpus": 0.9, "num_gpus": None} and cpu.device == "cpu"


def test_gpus_the_cluster_lacks_are_a_resource_error() -> None:
    with pytest.raises(ResourceError, match=r"1 GPU.* per actor .* the Ray cluster has 0 GPUs"):
        plan_resources({"CPU": 2.0}, pending_units=4, gpus_per_actor=1.0)
    with pytest.raises(ResourceError, match=r"batch\.actors=3 × 1 GPU"):
        plan_resources({"CPU": 8.0, "GPU": 2.0}, pending_units=4, gpus_per_actor=1.0, actors=3)


# --------------------------------------------------------------------------- config


def test_batch_section_defaults_and_rejects_typos() -> None:
    base = {
        "name": "p",
        "data": {"path": "x.parquet", "label": "y"},
        "registry": {"model_name": "m"},
    }
    config = PipelineConfig.model_validate(base)
    assert config.batch == BatchConfig()
    assert config.batch.on_bad_rows == "fail" and config.batch.pass_through is None
    with pytest.raises(ValueError, match="batch_sise"):
        PipelineConfig.model_validate({**base, "batch": {"batch_sise": 5}})
    for name, field in BatchConfig.model_fields.items():
        assert field.description, name


def test_batch_overrides_from_the_command_line(tmp_path: Path) -> None:
    from raymlops.core.config import load_config

    path = tmp_path / "p.yaml"
    path.write_text("name: p\ndata: {path: x.parquet, label: y}\nregistry: {model_name: m}\n")
    config = load_config(path, ["batch.on_bad_rows=skip", "batch.gpus_per_actor=0.5"])
    assert config.batch.on_bad_rows == "skip" and config.batch.gpus_per_actor == 0.5
    with pytest.raises(ConfigError, match=r"batch\.on_bad_rows"):
        load_config(path, ["batch.on_bad_rows=ignore"])


# --------------------------------------------------------------------------- units, manifest


def _file(path: str, groups: tuple[int, ...] = (), fmt: str = "parquet") -> InputFile:
    schema = pa.schema([("id", pa.int64()), ("f0", pa.float32())])
    rows = sum(groups) if fmt == "parquet" else None
    return InputFile(path, fmt, 100, 1, schema, rows, groups)  # type: ignore[arg-type]


def test_units_follow_row_groups_and_never_span_files() -> None:
    files = [
        _file("/in/b.parquet", (100,) * 5),
        _file("/in/a.parquet", (300,)),
        _file("/in/c.csv", fmt="csv"),
    ]
    units = plan_units(files, rows_per_unit=250)
    assert [(u.path, u.row_groups, u.first_row, u.num_rows) for u in units] == [
        ("/in/a.parquet", (0,), 0, 300),
        ("/in/b.parquet", (0, 1, 2), 0, 300),
        ("/in/b.parquet", (3, 4), 300, 200),
        ("/in/c.csv", (), 0, None),
    ]
    assert [u.index for u in units] == [0, 1, 2, 3]
    assert units[2].output_name == "part-00002.parquet"
    assert plan_units(list(reversed(files)), 250) == units  # deterministic
    assert WorkUnit.from_json(units[2].to_json()) == units[2]
    # An empty Parquet file is still a unit (its output records that it was done).
    assert plan_units([_file("/in/e.parquet", ())], 10)[0].num_rows == 0


def test_manifest_round_trip_and_named_differences() -> None:
    units = plan_units([_file("/in/a.parquet", (10, 10))], 10)
    fingerprint = {"model": "m", "version": 1, "input_digest": "abc", "on_bad_rows": "fail"}
    manifest = Manifest(fingerprint, units)
    again = Manifest.from_json(manifest.to_json())
    assert again.units == units and again.fingerprint == fingerprint and not again.complete
    assert again.differences(dict(fingerprint)) == []
    changed = {**fingerprint, "version": 2, "input_digest": "xyz"}
    assert again.differences(changed) == [
        "the input files changed (names, sizes or modification times)",
        "version 1 → 2",
    ]


# --------------------------------------------------------------------------- schema check


def test_schema_check_names_the_column_and_the_file() -> None:
    good = InputFile(
        "/in/ok.parquet", "parquet", 1, 1,
        pa.schema([("id", pa.int64()), ("f0", pa.float64()), ("c0", pa.string())]),
    )  # fmt: skip
    check_schema([good], ["f0"], ["c0"], ["id"], ["0", "1"])
    missing = InputFile("/in/bad.parquet", "parquet", 1, 1, pa.schema([("id", pa.int64())]))
    with pytest.raises(DataError, match=r"feature column 'f0' is missing from /in/bad.parquet"):
        check_schema([good, missing], ["f0"], ["c0"], ["id"], None)
    timestamps = InputFile(
        "/in/t.parquet", "parquet", 1, 1,
        pa.schema([("id", pa.int64()), ("f0", pa.timestamp("s")), ("c0", pa.string())]),
    )  # fmt: skip
    with pytest.raises(DataError, match=r"'f0' in /in/t.parquet has type timestamp\[s\]"):
        check_schema([timestamps], ["f0"], ["c0"], ["id"], None)
    lists = InputFile(
        "/in/l.parquet", "parquet", 1, 1,
        pa.schema([("f0", pa.float64()), ("c0", pa.list_(pa.string()))]),
    )  # fmt: skip
    with pytest.raises(DataError, match=r"'c0' in /in/l.parquet has type list"):
        check_schema([lists], ["f0"], ["c0"], [], None)
    with pytest.raises(DataError, match=r"pass-through column 'key' is missing from /in/ok"):
        check_schema([good], ["f0"], ["c0"], ["key"], None)
    with pytest.raises(UserInputError, match="'proba_1' has the name of an output column"):
        check_schema([good], ["f0"], ["c0"], ["proba_1"], ["0", "1"])


def test_output_schema() -> None:
    schema = output_schema(
        pa.schema([("id", pa.int64()), ("f0", pa.float32())]), ["id"], ["a", "b"]
    )
    assert schema.names == ["id", "prediction", "proba_a", "proba_b", "model_name", "model_version"]
    regression = output_schema(pa.schema([("k", pa.string())]), ["k"], None)
    assert regression.field("prediction").type == pa.float64()


# --------------------------------------------------------------------------- input scan, digest


def test_scan_reads_footers_and_headers_and_names_a_corrupt_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    table = pa.table({"id": np.arange(10), "f0": np.linspace(0, 1, 10)})
    pq.write_table(table, folder / "a.parquet", row_group_size=4)
    _, root, files = scan_input(str(folder))
    assert root == str(folder) and [f.row_group_rows for f in files] == [(4, 4, 2)]
    assert files[0].num_rows == 10 and files[0].schema.names == ["id", "f0"]

    (folder / "b.parquet").write_bytes(b"PAR1 not really a parquet file PAR1")
    with pytest.raises(DataError, match=r"cannot read .*b\.parquet: .*corrupt or truncated"):
        scan_input(str(folder))

    csv = tmp_path / "x.csv"
    csv.write_text("id,f0,c0\n1,0.5,a\n2,,b\n")
    _, _, csv_files = scan_input(str(csv))
    assert csv_files[0].format == "csv" and csv_files[0].num_rows is None
    assert csv_files[0].schema.field("f0").type == pa.float64()


def test_input_digest_changes_with_the_files_not_with_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"x": [1, 2, 3]}), folder / "a.parquet")
    _, root, files = scan_input(str(folder))
    first = input_digest(files, root)
    assert input_digest(files, root) == first
    moved = tmp_path / "moved"
    folder.rename(moved)
    _, root2, files2 = scan_input(str(moved))
    assert input_digest(files2, root2) == first  # relative names, sizes, mtimes
    pq.write_table(pa.table({"x": [1, 2, 3, 4]}), moved / "b.parquet")
    _, root3, files3 = scan_input(str(moved))
    assert input_digest(files3, root3) != first


def test_csv_conversion_errors_name_their_column() -> None:
    message = "In CSV column #2: CSV conversion error to double: invalid value 'abc'"
    assert parse_csv_column_error(message, ["id", "f0", "f1"]) == "f1"
    assert parse_csv_column_error("something else", ["id"]) is None


# --------------------------------------------------------------------------- one unit, no Ray


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """A small classifier over f0, f1 (numeric) and c0 (categorical), untrained weights."""
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "id": np.arange(200),
            "f0": rng.normal(size=200),
            "f1": rng.normal(size=200),
            "c0": rng.choice(["a", "b", "c"], size=200),
            "label": rng.integers(0, 2, size=200),
        }
    )
    config = PipelineConfig.model_validate(
        {
            "name": "u",
            "data": {"path": "x.parquet", "label": "label", "id_columns": ["id"]},
            "registry": {"model_name": "u"},
        }
    )
    roles = infer_roles(table, config.data, config.features)
    prep = Preprocessor.fit(table, roles, config.features)
    torch.manual_seed(0)
    model = build_model("mlp", {"depth": 1, "width": 8}, prep.n_outputs, prep.n_targets)
    return Predictor(model, prep, {"name": "mlp"})


def _spec(out: Path, predictor: Predictor, **changes: Any) -> WorkerSpec:
    prep = predictor.preprocessor
    values: dict[str, Any] = {
        "input": "/",
        "output": str(out),
        "columns": ["id", *prep.feature_names],
        "numeric": list(prep.numeric),
        "pass_through": ["id"],
        "classes": prep.classes,
        "on_bad_rows": "fail",
        "batch_size": 64,
        "compression": "snappy",
        "model_name": "u",
        "model_version": 3,
        **changes,
    }
    return WorkerSpec(**values)


def _rows(n: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    return pd.DataFrame(
        {
            "id": np.arange(start, start + n),
            "f0": rng.normal(size=n),
            "f1": rng.normal(size=n),
            "c0": rng.choice(["a", "b", "z"], size=n),
        }
    )


def test_a_unit_is_predicted_and_written_atomically(tmp_path: Path, predictor: Predictor) -> None:
    source = tmp_path / "in.parquet"
    frame = _rows(300)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source, row_group_size=100)
    out = OutputFolder(str(tmp_path / "out"))
    unit = WorkUnit(7, str(source), "parquet", (1, 2), 100, 200)
    fs = out.fs
    stats = process_unit(unit, predictor, _spec(tmp_path / "out", predictor), fs, out)
    assert stats["rows_in"] == stats["rows_out"] == 200 and stats["rows_rejected"] == 0
    assert sorted(os.listdir(tmp_path / "out")) == [".tmp", "part-00007.parquet"]
    assert os.listdir(tmp_path / "out" / ".tmp") == []  # renamed away, nothing left
    written = pq.read_table(tmp_path / "out" / "part-00007.parquet")
    assert written.column_names == [
        "id", "prediction", "proba_0", "proba_1", "model_name", "model_version"
    ]  # fmt: skip
    expected = predictor.predict(frame.iloc[100:300]).to_frame()
    got = written.to_pandas()
    assert got["id"].tolist() == list(range(100, 300))
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(got["proba_1"], expected["proba_1"], rtol=1e-6)
    assert set(got["model_name"]) == {"u"} and set(got["model_version"]) == {3}
    assert read_unit_stats(out, unit)["rows_out"] == 200
    footer = pq.read_metadata(tmp_path / "out" / "part-00007.parquet").metadata
    assert json.loads(footer[STATS_KEY.encode()])["unit"] == 7


def test_bad_rows_are_skipped_into_rejects_or_fail_naming_file_row_and_column(
    tmp_path: Path, predictor: Predictor
) -> None:
    frame = _rows(50).astype({"f1": "object"})
    frame.loc[[3, 40], "f1"] = ["abc", "1e400x"]
    frame.loc[10, "f1"] = None  # missing: imputed, as in training, not a bad row
    frame["f1"] = frame["f1"].map(lambda v: None if v is None else str(v))
    source = tmp_path / "in.csv"
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), source)
    unit = WorkUnit(0, str(source), "csv", (), 0, None)

    out = OutputFolder(str(tmp_path / "skip"))
    spec = _spec(tmp_path / "skip", predictor, on_bad_rows="skip")
    stats = process_unit(unit, predictor, spec, out.fs, out)
    assert (stats["rows_in"], stats["rows_out"], stats["rows_rejected"]) == (50, 48, 2)
    rejects = pq.read_table(tmp_path / "skip" / "_rejects" / "part-00000.parquet").to_pandas()
    assert rejects["source_row"].tolist() == [3, 40]
    assert rejects["reason"].tolist() == [
        "column 'f1': 'abc' is not a number",
        "column 'f1': '1e400x' is not a number",
    ]
    assert rejects["source_file"].tolist() == [str(source)] * 2
    written = pq.read_table(tmp_path / "skip" / "part-00000.parquet").to_pandas()
    assert 3 not in set(written["id"]) and 10 in set(written["id"]) and len(written) == 48

    out = OutputFolder(str(tmp_path / "fail"))
    with pytest.raises(DataError, match=r"in\.csv: row 3: column 'f1': 'abc' is not a number"):
        process_unit(unit, predictor, _spec(tmp_path / "fail", predictor), out.fs, out)
    assert not (tmp_path / "fail" / "part-00000.parquet").exists()
    assert os.listdir(tmp_path / "fail" / ".tmp") == []  # the partial file was deleted


def test_a_csv_column_typed_from_its_first_block_is_reread_as_text(
    tmp_path: Path, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_worker, "_CSV_BLOCK", 4096)  # many blocks in a small file
    frame = _rows(2000)
    values = frame["f0"].map(repr).tolist()
    values[1900] = "n/a?"
    frame["f0"] = values
    source = tmp_path / "late.csv"
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), source)
    out = OutputFolder(str(tmp_path / "out"))
    spec = _spec(tmp_path / "out", predictor, on_bad_rows="skip")
    unit = WorkUnit(0, str(source), "csv", (), 0, None)
    stats = process_unit(unit, predictor, spec, out.fs, out)
    assert (stats["rows_in"], stats["rows_out"], stats["rows_rejected"]) == (2000, 1999, 1)
    rejects = pq.read_table(tmp_path / "out" / "_rejects" / "part-00000.parquet")
    assert rejects.column("source_row").to_pylist() == [1900]


def test_find_bad_rows_follows_the_predictor_rule(predictor: Predictor) -> None:
    batch = pa.record_batch(
        {"f0": pa.array(["1.5", None, "x", " 2 "]), "f1": pa.array([1.0, 2.0, 3.0, 4.0])}
    )
    found = find_bad_rows(batch, ["f0", "f1"])
    assert found is not None
    mask, reasons = found
    assert mask.tolist() == [False, False, True, False]
    assert reasons[2] == "column 'f0': 'x' is not a number"
    # The Predictor itself accepts exactly the rows find_bad_rows keeps.
    with pytest.raises(DataError):
        predictor.preprocessor.transform(
            {"f0": batch.column("f0"), "f1": batch.column("f1"), "c0": ["a"] * 4}
        )
    assert find_bad_rows(pa.record_batch({"f0": pa.array([1.0])}), ["f0"]) is None


def test_output_folder_refuses_foreign_folders_and_cleans_temp(tmp_path: Path) -> None:
    out = OutputFolder(str(tmp_path / "new"))
    assert out.is_empty() and out.names() == set()
    out.write_text("_raymlops_batch.json", "{}")
    assert out.read_text("_raymlops_batch.json") == "{}" and not out.is_empty()
    temp = out.temp_path("part-00000.parquet")
    Path(temp).write_text("partial")
    out.clean_temp()
    assert not (tmp_path / "new" / ".tmp").exists()
    # Two runs into one output: each cleans its own temporary folder and dead runs', never
    # a live run's (#15).
    first, second = (OutputFolder(str(tmp_path / "new"), run=r) for r in ("aaa", "bbb"))
    Path(first.temp_path("part-00000.parquet")).write_text("partial")
    Path(second.temp_path("part-00001.parquet")).write_text("partial")
    first.clean_temp()
    assert sorted(p.name for p in (tmp_path / "new" / ".tmp").iterdir()) == ["bbb"]
    old = Path(first.temp_path("part-00002.parquet"))
    old.write_text("a dead run's")
    os.utime(old, (1, 1))
    os.utime(old.parent, (1, 1))
    second.clean_temp()  # its own and the dead one's
    assert not (tmp_path / "new" / ".tmp").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        OutputFolder(str(tmp_path / "file")).is_empty()


# --------------------------------------------------------------------------- the command line


def test_submit_batch_needs_input_and_output_and_makes_local_paths_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import click

    from raymlops.cli.run import _step_args

    monkeypatch.chdir(tmp_path)
    args = _step_args("batch", ("--input", "in", "--output=out", "--gpus", "1"))
    assert args == ["--input", str(tmp_path / "in"), f"--output={tmp_path / 'out'}", "--gpus", "1"]
    uris = ("--input", "s3://b/in", "--output", "gs://b/out")
    assert _step_args("batch", uris) == list(uris)
    with pytest.raises(click.UsageError, match="needs --output after `--`"):
        _step_args("batch", ("--input", "in"))
    assert _step_args("train", ("--json",)) == ["--json"]


def test_batch_with_a_job_api_address_points_to_submit() -> None:
    from click.testing import CliRunner

    from raymlops.cli.main import cli

    result = CliRunner().invoke(
        cli, ["batch", "--input", "x", "--output", "y", "--address", "http://127.0.0.1:8265"]
    )
    assert result.exit_code == 2
    assert "raymlops submit batch --address http://127.0.0.1:8265" in result.stderr


def test_a_regression_unit_writes_the_predicted_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    table = pa.table(
        {"id": np.arange(120), "f0": rng.normal(size=120), "y": rng.normal(size=120) * 10 + 3}
    )
    config = PipelineConfig.model_validate(
        {
            "name": "r",
            "data": {"path": "x.parquet", "label": "y", "task": "regression", "id_columns": ["id"]},
            "registry": {"model_name": "r"},
        }
    )
    prep = Preprocessor.fit(
        table, infer_roles(table, config.data, config.features), config.features
    )
    predictor = Predictor(build_model("mlp", {}, prep.n_outputs, 1), prep, {"name": "mlp"})
    source = tmp_path / "in.parquet"
    pq.write_table(table.drop_columns(["y"]), source)
    out = OutputFolder(str(tmp_path / "out"))
    spec = _spec(tmp_path / "out", predictor, columns=["id", "f0"], classes=None)
    process_unit(WorkUnit(0, str(source), "parquet", (0,), 0, 120), predictor, spec, out.fs, out)
    written = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert written.column_names == ["id", "prediction", "model_name", "model_version"]
    expected = predictor.predict(table).predictions
    np.testing.assert_allclose(written.column("prediction").to_numpy(), expected, rtol=1e-6)


def test_the_pool_plans_with_the_free_cpus_only() -> None:
    """Serve replicas (or a Tune run) holding CPUs: the pool is sized to what is free, so its
    actors never wait for CPUs that are not released; nothing free → one clear error."""
    from raymlops.batch.plan import usable_resources

    total = {"CPU": 4.0, "memory": 1e9}
    assert usable_resources(total, {"CPU": 4.0}) == (total, None)
    usable, note = usable_resources(total, {"CPU": 1.5})
    assert usable == {"CPU": 1.5, "memory": 1e9}
    assert note == "1.5 of 4 CPUs free: the actor pool is sized to them"
    assert plan_resources(usable, 10).actors == 1
    with pytest.raises(ResourceError, match="none of the Ray cluster's 4 CPUs is free"):
        usable_resources(total, {"CPU": 0.0})


def test_work_lost_with_a_node_is_told_from_work_that_failed() -> None:
    """A lost actor or node (redone in a new round) against any other failure (raised)."""
    from ray import exceptions as rex

    from raymlops.batch.run import _lost_workers

    lost = rex.ActorUnavailableError("the node is gone", None)
    try:
        try:
            raise lost
        except rex.RayError as exc:
            raise RuntimeError("Ray Data's wrapper") from exc
    except RuntimeError as wrapped:
        assert _lost_workers(wrapped) is lost
    assert isinstance(_lost_workers(rex.NodeDiedError("node x died")), rex.NodeDiedError)
    assert _lost_workers(ValueError("a bad value")) is None
    assert _lost_workers(rex.RayTaskError("f", "traceback", ValueError("in the unit"))) is None

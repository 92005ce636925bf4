"""Reading data that may not fit in memory (`data.streaming`) outside training: the batch
stream, the bounded sample the main job's traffic steps use, the early check `raymlops run`
makes, and the retraining set copied batch by batch. Each test makes the whole-table reader
fail, so a path that still loads the data whole cannot pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raymlops.data.dataset as data_module
from raymlops.core.config import PipelineConfig, load_config
from raymlops.core.errors import DataError
from raymlops.data.dataset import check_source, iter_tables, load_table, sample_table
from raymlops.loop.pipeline import _sample_rows
from raymlops.loop.retrain import build_training_data

FILES, ROWS_PER_FILE = 3, 70_000  # more than one stream batch (65,536 rows) per file


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream") / "rows"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(FILES):
        start = i * ROWS_PER_FILE
        frame = pd.DataFrame(
            {
                "id": np.arange(start, start + ROWS_PER_FILE),
                "x": rng.normal(size=ROWS_PER_FILE),
                "c": rng.choice(["a", "b", "c"], size=ROWS_PER_FILE),
                "y": rng.integers(0, 2, size=ROWS_PER_FILE),
            }
        )
        frame.to_parquet(root / f"part-{i}.parquet", index=False)
    return root


@pytest.fixture
def no_whole_reads(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a whole file of the streamed data (what `load_table` does) fails from here on
    (small side inputs, such as recent labelled rows, may still be read whole)."""
    read_file = data_module.read_file

    def refuse(fs: Any, file: str, fmt: str) -> pa.Table:
        if Path(file).is_relative_to(folder.resolve()):
            raise AssertionError(f"{file} was read whole")
        return read_file(fs, file, fmt)

    monkeypatch.setattr(data_module, "read_file", refuse)


def _config(folder: Path, *extra: str) -> PipelineConfig:
    return load_config(
        None,
        [
            f"data.path={folder}",
            "data.label=y",
            'data.id_columns=["id"]',
            "data.streaming=true",
            *extra,
        ],
    )


def test_the_stream_holds_a_batch_at_a_time_and_adds_up_to_the_table(folder: Path) -> None:
    whole = load_table(str(folder))
    parts = list(iter_tables(str(folder)))
    assert max(t.num_rows for t in parts) <= 65_536
    assert len(parts) >= 2 * FILES
    assert pa.concat_tables(parts).equals(whole)


def test_the_sample_is_bounded_and_spread_over_every_file(
    folder: Path, no_whole_reads: None
) -> None:
    sample = sample_table(str(folder), rows=3_000)
    assert sample.num_rows == 3_000
    files_seen = set((np.asarray(sample.column("id")) // ROWS_PER_FILE).tolist())
    assert files_seen == set(range(FILES))


def test_a_streaming_run_samples_rows_without_loading_the_data(
    folder: Path, no_whole_reads: None
) -> None:
    rows = _sample_rows(_config(folder), 5)
    assert len(rows) == 5 and set(rows.columns) == {"id", "x", "c", "y"}


def test_the_early_check_names_a_missing_label_in_one_line(
    folder: Path, no_whole_reads: None
) -> None:
    roles = check_source(_config(folder).data, _config(folder).features)
    assert roles.label == "y" and roles.numeric == ["x"] and roles.categorical == ["c"]
    bad = load_config(None, [f"data.path={folder}", "data.label=label", "data.streaming=true"])
    with pytest.raises(DataError, match="label column 'label' not found") as info:
        check_source(bad.data, bad.features)
    assert "\n" not in str(info.value)


def test_the_retraining_set_is_copied_batch_by_batch(
    folder: Path, tmp_path: Path, no_whole_reads: None
) -> None:
    recent = tmp_path / "recent.parquet"
    pd.DataFrame({"y": [1], "x": [9.0], "c": ["z"], "id": [-1], "request_id": ["r"]}).to_parquet(
        recent
    )
    path, rows = build_training_data(_config(folder), tmp_path / "home", str(recent))
    assert rows == FILES * ROWS_PER_FILE + 1
    written = pq.ParquetFile(path)
    assert written.metadata.num_rows == rows
    assert written.schema_arrow.names == ["id", "x", "c", "y"]
    assert not list(Path(path).parent.glob(".*"))  # no hidden temporary left behind


def test_recent_rows_without_the_id_columns_get_empty_ids(tmp_path: Path, folder: Path) -> None:
    recent = tmp_path / "recent.parquet"
    pd.DataFrame({"y": [0, 1], "x": [1.0, 2.0], "c": ["a", "b"]}).to_parquet(recent)
    config = _config(folder, "retrain.include_reference=false")
    path, rows = build_training_data(config, tmp_path / "home", str(recent))
    written = pq.read_table(path)
    assert rows == 2 and written.column_names == ["id", "x", "c", "y"]
    assert written.column("id").null_count == 2 and written.column("x").to_pylist() == [1.0, 2.0]


def test_a_failed_retraining_set_leaves_no_file(tmp_path: Path, folder: Path) -> None:
    recent = tmp_path / "recent.parquet"
    pd.DataFrame({"x": [9.0]}).to_parquet(recent)
    with pytest.raises(Exception, match="lacks column"):
        build_training_data(_config(folder), tmp_path / "home", str(recent))
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file()]


def test_the_gate_sample_is_a_bounded_uniform_share_of_the_test_split(
    folder: Path, no_whole_reads: None
) -> None:
    from raymlops.train.streaming import held_out_sample, scan_dataset, select_split

    config = _config(folder)
    scanned = scan_dataset(config.data, config.features)
    sample, digest, total = held_out_sample(config.data, 5_000)
    assert digest == scanned.version.digest
    assert total == scanned.version.split["test"]
    assert sample.num_rows == 5_000 < total
    # Only test rows, no row twice, drawn from every file (ids 0–69,999 are file 0, …).
    split = config.data.split
    again = select_split(sample, "y", split.seed, split.validation, split.test, "test")
    assert again.num_rows == sample.num_rows
    ids = sample.column("id").to_numpy()
    assert len(np.unique(ids)) == len(ids)
    assert set(np.unique(ids // ROWS_PER_FILE)) == set(range(FILES))
    whole, _, _ = held_out_sample(config.data, 10**6)
    assert whole.num_rows == total


def test_the_gate_sample_names_a_missing_label(folder: Path) -> None:
    from raymlops.train.streaming import held_out_sample

    with pytest.raises(DataError, match="no label column 'nope'"):
        held_out_sample(_config(folder, "data.label=nope").data, 100)


def test_files_with_different_inferred_types_keep_every_row_in_one_split(
    tmp_path: Path,
) -> None:
    from raymlops.train.streaming import held_out_sample, scan_dataset

    # CSV infers int64 for the first file's `n` and float64 for the second's: the scan casts
    # to the first file's schema, and so must every later read, or rows hash differently
    # and change split between the scan, the trials' streams and the test evaluation.
    root = tmp_path / "csv"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i, values in enumerate((np.arange(3000), np.arange(3000, 6000).astype(float))):
        frame = pd.DataFrame(
            {"n": values, "x": rng.normal(size=3000), "y": rng.integers(0, 2, 3000)}
        )
        frame.to_csv(root / f"part-{i}.csv", index=False)
    assert "3000.0" in (root / "part-1.csv").read_text()[:40]
    config = load_config(None, [f"data.path={root}", "data.label=y", "data.streaming=true"])
    scanned = scan_dataset(config.data, config.features)
    for split in ("train", "validation", "test"):
        rows = sum(t.num_rows for t in scanned.batches(split))
        assert rows == scanned.version.split[split], split
    _, _, test_rows = held_out_sample(config.data, 100)
    assert test_rows == scanned.version.split["test"]

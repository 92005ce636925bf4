"""Reading what is monitored: the source's files and partitions, the read units, and the
Ray Data pass that summarises them block by block."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raymlops.core.errors import DataError, RaymlopsError
from raymlops.core.home import home_dir
from raymlops.core.report import say
from raymlops.data.dataset import csv_parse_options, read_file
from raymlops.data.log_compaction import visible_files
from raymlops.data.prediction_log import log_root, model_log_root, parse_partition
from raymlops.monitor.drift import (
    DriftSettings,
)

if TYPE_CHECKING:
    from raymlops.core.config import MonitorConfig

from raymlops.monitor.summary import (
    _BLOCK_ROWS,
    _ERROR,
    _PLAIN_STRINGS,
    POSITION,
    _Partial,
    _Plan,
    _summarise_batch,
    position_keys,
)

# --------------------------------------------------------------------------- sources


@dataclass
class _Files:
    root: str
    filesystem: Any
    files: list[str]
    format: str
    dates: list[date | None]
    versions: list[int | None]


def default_prediction_log(model_name: str, home: str | Path | None = None) -> Path:
    """Where serving writes a model's prediction log by default: <home>/predictions/<model>."""
    return Path(model_log_root(log_root(None, home_dir(home)), model_name))


def _list_source(path: str) -> _Files:
    from raymlops.data.dataset import resolve_source

    source = resolve_source(path)
    if source.format == "sklearn":
        raise DataError(f"{path} is a bundled training dataset, not traffic to monitor")
    files = source.files
    if source.format == "parquet":  # a compaction's merged inputs are read in its output
        files = visible_files(source.filesystem, files)
    dates: list[date | None] = []
    versions: list[int | None] = []
    for file in files:
        day, version = parse_partition(file)
        dates.append(day)
        versions.append(version)
    return _Files(path, source.filesystem, files, source.format, dates, versions)


def _schema_names(files: _Files) -> list[str]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    first = files.files[0]
    try:
        if files.format == "parquet":
            return list(pq.read_schema(first, filesystem=files.filesystem).names)
        with files.filesystem.open_input_stream(first) as stream:
            reader = pacsv.open_csv(stream, parse_options=csv_parse_options(first))
            return list(reader.schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {first}: {str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------- the pass


def _settings(cfg: MonitorConfig) -> DriftSettings:
    return DriftSettings(
        numeric_threshold=cfg.numeric_threshold,
        categorical_threshold=cfg.categorical_threshold,
        p_value=cfg.p_value,
        min_samples=cfg.min_samples,
        large_sample=cfg.large_sample,
        drift_share=cfg.drift_share,
    )


@contextmanager
def _quiet_data_context(show_progress: bool) -> Iterator[None]:
    """Ray Data's progress bars only on an interactive terminal, and none of its INFO logs
    (execution plans, log-style progress) — restored afterwards."""
    import logging
    import sys

    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    logger = logging.getLogger("ray.data")
    level = logger.level
    ctx.enable_progress_bars = show_progress and sys.stderr.isatty()
    ctx.print_on_execution_start = False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        logger.setLevel(level)


class FileGone(DataError):
    """A listed file was gone when read: a log compaction merged it into a new file and
    deleted it after publishing that one. Listing again finds the merged file."""

    def __init__(self, file: str, detail: str = "") -> None:
        super().__init__(f"cannot read {file}: {detail or 'it no longer exists'}")
        self.file, self.detail = file, detail

    def __reduce__(self) -> tuple[Any, ...]:  # travels back from a Ray task as itself
        return (FileGone, (self.file, self.detail))


@dataclass(frozen=True)
class _Unit:
    """A piece of the input one read task reads: a file, or some row groups of one."""

    file: str
    columns: tuple[str, ...]
    size: int
    row_groups: tuple[int, ...] | None = None


def _read_unit(unit: _Unit, filesystem: Any, fmt: str) -> pa.Table:
    """One unit of the input, only the columns the monitor needs (those it has)."""
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            # Strings stay dictionary-encoded (read_dictionary applies to string columns
            # only): categories, classes and roles are never materialised, and counting them
            # is counting indices. One open when the file has every column asked for; else
            # its footer says which it has.
            wanted = [c for c in unit.columns if c not in (*_PLAIN_STRINGS, POSITION)]
            try:
                parquet = pq.ParquetFile(unit.file, filesystem=filesystem, read_dictionary=wanted)
            except KeyError:
                footer = pq.ParquetFile(unit.file, filesystem=filesystem)
                names = set(footer.schema_arrow.names)
                parquet = pq.ParquetFile(
                    unit.file,
                    filesystem=filesystem,
                    read_dictionary=[c for c in wanted if c in names],
                    metadata=footer.metadata,
                )
            present = set(parquet.schema_arrow.names)
            columns = [c for c in unit.columns if c in present]
            if unit.row_groups is not None:
                table = parquet.read_row_groups(unit.row_groups, columns, use_threads=False)
                meta = parquet.metadata
                sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
                starts = np.concatenate([[0], np.cumsum(sizes)])
                rows = np.concatenate(
                    [np.arange(starts[g], starts[g + 1]) for g in unit.row_groups]
                )
            else:
                table = parquet.read(columns=columns, use_threads=False)
                rows = np.arange(table.num_rows)
        else:
            table = read_file(filesystem, unit.file, fmt)
            table = table.select([c for c in unit.columns if c in table.column_names])
            rows = np.arange(table.num_rows)
    except FileNotFoundError as exc:
        raise FileGone(unit.file, str(exc).splitlines()[0]) from None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {unit.file}: {str(exc).splitlines()[0]}") from None
    if POSITION in unit.columns:  # the row sample's keys: where each row is in its file
        table = table.append_column(POSITION, pa.array(position_keys(unit.file, rows)))
    return table


def _units(source: _Files, columns: dict[str, list[str]], wanted: int) -> list[_Unit]:
    """Files as read units; when there are fewer files than `wanted` tasks, Parquet files
    with several row groups are cut into row-group ranges so that every core has work."""
    import pyarrow.parquet as pq

    infos = source.filesystem.get_file_info(source.files)
    widest = max(len(c) for c in columns.values())
    # Work ≈ bytes read: a file read for its KPIs only counts its share of the columns.
    units = [
        _Unit(f, tuple(columns[f]), max(int((info.size or 0) * len(columns[f]) / widest), 1))
        for f, info in zip(source.files, infos, strict=True)
    ]
    if source.format != "parquet" or len(units) >= wanted:
        return units
    out: list[_Unit] = []
    pieces = max(1, -(-wanted // len(units)))
    for unit in units:
        try:
            meta = pq.ParquetFile(unit.file, filesystem=source.filesystem).metadata
        except (pa.ArrowException, OSError):
            out.append(unit)  # its reader will report the problem
            continue
        groups = meta.num_row_groups
        if groups < 2:
            out.append(unit)
            continue
        for part in np.array_split(np.arange(groups), min(pieces, groups)):
            size = sum(meta.row_group(int(g)).total_byte_size for g in part)
            out.append(_Unit(unit.file, unit.columns, max(size, 1), tuple(int(g) for g in part)))
    return out


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Files of one block; a column some files lack (another version's features, an error
    column) is null in their rows."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise DataError(f"log files with incompatible columns: {exc}") from None


def _log_datasource(units: list[_Unit], filesystem: Any, fmt: str) -> Any:
    """A Ray Data datasource over the log: one read task per group of units (files, or row
    groups of a large file; balanced by size), each yielding one block per unit with only
    the needed columns.

    Ray Data's own `read_parquet` was measured instead: on this Ray it plans the read with a
    separate file-listing task (about 1.8 s for 20 local files) and packed a 1M-row log into
    a single read task, so nothing ran in parallel.
    """
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    sizes = [u.size for u in units]

    class _PredictionLogDatasource(Datasource):  # type: ignore[misc]
        def estimate_inmemory_data_size(self) -> int:
            return int(sum(sizes) * 2)

        def get_name(self) -> str:
            return "PredictionLog"

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[Any]:
            groups: list[list[int]] = [[] for _ in range(max(1, min(parallelism, len(units))))]
            loads = [0] * len(groups)
            for i in sorted(range(len(units)), key=lambda i: -sizes[i]):
                target = loads.index(min(loads))
                groups[target].append(i)
                loads[target] += sizes[i]
            tasks = []
            for group in groups:
                chunk = [units[i] for i in sorted(group)]

                def read(chunk: list[_Unit] = chunk) -> Iterator[pa.Table]:
                    # Small files (serving flushes every second) are gathered into blocks
                    # of at least _BLOCK_ROWS rows: each block costs one summary.
                    pending: list[pa.Table] = []
                    rows = 0
                    try:
                        for unit in chunk:
                            table = _read_unit(unit, filesystem, fmt)
                            pending.append(table)
                            rows += table.num_rows
                            if rows >= _BLOCK_ROWS:
                                yield _concat(pending)
                                pending, rows = [], 0
                        if pending:
                            yield _concat(pending)
                    except RaymlopsError as exc:  # reported by the driver, as itself
                        yield pa.table({_ERROR: [pickle.dumps(exc, protocol=5)]})

                meta = BlockMetadata(
                    num_rows=None,
                    size_bytes=sum(sizes[i] for i in group) * 2,
                    input_files=sorted({units[i].file for i in group}),
                    exec_stats=None,
                )
                tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
            return tasks

    return _PredictionLogDatasource()


def run_pass(
    source: _Files,
    plan: _Plan,
    drift_files: list[bool] | None = None,
    tasks: int | None = None,
    show_progress: bool = False,
) -> _Partial:
    """The Ray Data pass: read (column-pruned), summarise every block in parallel, merge.

    Files of other versions (the log's `version=N` partitions, `drift_files` False) are read
    without the feature columns: they only feed the KPIs. By default twice as many read tasks
    as the cluster has CPUs (a slow file does not leave a core idle), each reading a
    size-balanced group of files, or of row groups when the files are few and large.
    """
    import ray
    import ray.data

    if not source.files:
        return _Partial()
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    mask = drift_files or [True] * len(source.files)
    with_features, meta_only = plan.columns(True), plan.columns(False)
    columns = {
        f: with_features if m else meta_only for f, m in zip(source.files, mask, strict=True)
    }
    units = _units(source, columns, tasks or 2 * cpus)
    n_tasks = min(len(units), tasks or 2 * cpus)
    task_cpus = _task_cpus(show_progress)
    ds = ray.data.read_datasource(
        _log_datasource(units, source.filesystem, source.format),
        override_num_blocks=n_tasks,
        num_cpus=task_cpus,
    ).map_batches(
        _summarise_batch,
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
        fn_kwargs={"plan": plan},
        num_cpus=task_cpus,
    )
    merged = _Partial()
    with _quiet_data_context(show_progress):
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for blob in batch.column("partial").to_pylist():
                summary = pickle.loads(blob)
                if isinstance(summary, RaymlopsError):
                    raise summary
                merged.merge(summary)
    return merged


def _task_cpus(echo: bool) -> float:
    """CPUs each Ray Data task reserves: one on a cluster with every CPU free; none when
    something else holds CPUs (Serve replicas beside us), so that monitoring shares the
    cores with mostly idle replicas instead of waiting for a CPU that may not come back
    before they scale down (even one free CPU can be taken meanwhile by a replica that
    autoscaling starts)."""
    import ray

    free = float(ray.available_resources().get("CPU", 0.0))
    total = float(ray.cluster_resources().get("CPU", 0.0))
    if free >= 1.0 and free >= total:
        return 1.0
    if echo:
        say(
            f"▸ {free:g} of {total:g} CPUs free (the rest reserved, e.g. by Serve replicas): "
            "monitoring runs its tasks without a CPU reservation"
        )
    return 0.0

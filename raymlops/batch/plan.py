"""Planning a batch-inference run, without Ray: what the input holds, how it splits into work
units, whether its columns fit the model, what an existing output folder already holds, and
how many actors with how many CPUs/GPUs the cluster affords.

Everything here reads metadata only (Parquet footers, the first block of a CSV file, file
sizes and modification times), so a bad input fails in a second with a message naming the
file and column, before any Ray worker starts. The functions are pure enough to be unit
tested without a cluster.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops.core.errors import DataError, ResourceError, UserInputError
from raymlops.core.storage import open_location
from raymlops.data.dataset import csv_parse_options

__all__ = [
    "MANIFEST_NAME",
    "OUTPUT_COLUMNS",
    "REJECTS_DIR",
    "TMP_DIR",
    "InputFile",
    "Manifest",
    "ResourcePlan",
    "WorkUnit",
    "check_schema",
    "csv_read_options",
    "input_digest",
    "open_location",
    "output_schema",
    "parse_csv_column_error",
    "plan_resources",
    "plan_units",
    "scan_input",
    "usable_resources",
]

#: The manifest of an output folder: what run wrote it (fingerprint) and its work units.
MANIFEST_NAME = "_raymlops_batch.json"
#: Rejected rows (on_bad_rows: skip), one Parquet file per unit that had any.
REJECTS_DIR = "_rejects"
#: In-flight files on a local file system, renamed into place when complete.
TMP_DIR = ".tmp"
#: Output columns raymlops adds; a pass-through column may not use these names.
OUTPUT_COLUMNS = ("prediction", "model_name", "model_version")
_CSV_HEADER_BLOCK = 1 << 20


# --------------------------------------------------------------------------- locations


def csv_read_options(path: str) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    """How raymlops reads a CSV file: a header line, comma (tab for .tsv) separated."""
    return pacsv.ReadOptions(block_size=_CSV_HEADER_BLOCK), csv_parse_options(path)


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class InputFile:
    """One input file as its metadata describes it (nothing but the footer or header read)."""

    path: str
    format: Literal["parquet", "csv"]
    size: int
    mtime_ns: int
    schema: pa.Schema
    num_rows: int | None = None  # unknown for CSV until it is read
    row_group_rows: tuple[int, ...] = ()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _scan_parquet(fs: pafs.FileSystem, path: str) -> tuple[pa.Schema, int, tuple[int, ...]]:
    try:
        parquet = pq.ParquetFile(path, filesystem=fs)
        meta = parquet.metadata
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"cannot read {path}: {_one_line(exc)} (a corrupt or truncated Parquet file?)"
        ) from None
    rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return schema, int(meta.num_rows), rows


def _scan_csv(fs: pafs.FileSystem, path: str) -> pa.Schema:
    read, parse = csv_read_options(path)
    convert = pacsv.ConvertOptions(strings_can_be_null=True)
    try:
        with fs.open_input_stream(path) as stream:
            reader = pacsv.open_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert
            )
            return reader.schema
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}") from None


def scan_input(location: str, fmt: str = "auto") -> tuple[pafs.FileSystem, str, list[InputFile]]:
    """List the Parquet/CSV files of a file, folder or URI and read their metadata.

    Raises DataError naming the file when a footer or header cannot be read (a corrupt or
    truncated file), before any compute starts.
    """
    from raymlops.data.dataset import resolve_source

    if location.startswith("sklearn:"):
        raise DataError("batch input must be Parquet or CSV files, not a bundled dataset")
    source = resolve_source(location, fmt)
    fs = source.filesystem
    assert fs is not None and source.format in ("parquet", "csv")
    infos = fs.get_file_info(source.files)
    files = []
    for info in infos:
        mtime = int(info.mtime_ns or 0)
        if source.format == "parquet":
            schema, rows, groups = _scan_parquet(fs, info.path)
            files.append(
                InputFile(info.path, "parquet", int(info.size or 0), mtime, schema, rows, groups)
            )
        else:
            schema = _scan_csv(fs, info.path)
            files.append(InputFile(info.path, "csv", int(info.size or 0), mtime, schema))
    root = open_location(location)[1]
    return fs, root, files


def input_digest(files: Iterable[InputFile], root: str) -> str:
    """A cheap fingerprint of the input: each file's path (relative to the input), size,
    modification time and, for Parquet, row counts and schema from the footer. A changed,
    added or removed file changes it; the data pages themselves are never read."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        relative = f.path[len(root) :].lstrip("/") if f.path.startswith(root) else f.path
        record = [relative, f.format, f.size, f.mtime_ns, f.num_rows, list(f.row_group_rows)]
        digest.update(json.dumps(record).encode() + b"\0")
        digest.update(f.schema.remove_metadata().to_string().encode() + b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- schema check


def _numeric_ok(t: pa.DataType) -> bool:
    # Strings are parsed value by value (as in training); a value that is not a number is a
    # bad row, not a schema error.
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
        or pa.types.is_null(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
    )


def _categorical_ok(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_floating(t)
        or pa.types.is_null(t)
        or (pa.types.is_dictionary(t) and _categorical_ok(t.value_type))
    )


def check_schema(
    files: Iterable[InputFile],
    numeric: list[str],
    categorical: list[str],
    pass_through: list[str],
    classes: list[str] | None,
) -> None:
    """Every file has every feature the model needs, with a type it can read, and every
    pass-through column; raises DataError naming the first offending column and file."""
    taken = {*OUTPUT_COLUMNS, *(f"proba_{c}" for c in classes or [])}
    for col in pass_through:
        if col in taken:
            raise UserInputError(
                f"pass-through column '{col}' has the name of an output column; rename it or "
                "leave it out of batch.pass_through"
            )
    needed = [*numeric, *categorical]
    for f in files:
        names = set(f.schema.names)
        for col in needed:
            if col not in names:
                shown = ", ".join(needed[:8]) + (", …" if len(needed) > 8 else "")
                raise DataError(
                    f"feature column '{col}' is missing from {f.path} (the model reads {shown})"
                )
        for col in numeric:
            t = f.schema.field(col).type
            if not _numeric_ok(t):
                raise DataError(
                    f"feature column '{col}' in {f.path} has type {t}; the model reads it as "
                    "a number (integer, float, boolean or numeric text)"
                )
        for col in categorical:
            t = f.schema.field(col).type
            if not _categorical_ok(t):
                raise DataError(
                    f"feature column '{col}' in {f.path} has type {t}; the model reads it as "
                    "a category (text, integer or boolean)"
                )
        for col in pass_through:
            if col not in names:
                raise DataError(
                    f"pass-through column '{col}' is missing from {f.path} "
                    "(batch.pass_through, default data.id_columns)"
                )


def output_schema(
    input_schema: pa.Schema, pass_through: list[str], classes: list[str] | None
) -> pa.Schema:
    """Columns of an output file: pass-through columns as in the input, `prediction` (the
    class label, or the value for regression), `proba_<class>` per class, and the model's
    name and version."""
    fields = [input_schema.field(c).remove_metadata() for c in pass_through]
    if classes is not None:
        fields.append(pa.field("prediction", pa.string()))
        fields += [pa.field(f"proba_{c}", pa.float32()) for c in classes]
    else:
        fields.append(pa.field("prediction", pa.float64()))
    fields += [pa.field("model_name", pa.string()), pa.field("model_version", pa.int32())]
    return pa.schema(fields)


# --------------------------------------------------------------------------- work units


@dataclass(frozen=True)
class WorkUnit:
    """The smallest piece of work that is done, written and recorded as a whole: a run of
    consecutive row groups of one Parquet file, or one CSV file. Its output is one file,
    `part-<index>.parquet`, that appears atomically when the unit is complete."""

    index: int
    path: str
    format: Literal["parquet", "csv"]
    row_groups: tuple[int, ...] = ()  # empty: the whole file
    first_row: int = 0  # the unit's first row within its file
    num_rows: int | None = None

    @property
    def output_name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkUnit:
        data = json.loads(text)
        data["row_groups"] = tuple(data["row_groups"])
        return cls(**data)


def plan_units(files: list[InputFile], rows_per_unit: int) -> list[WorkUnit]:
    """Split the input into units: consecutive row groups of a Parquet file up to about
    `rows_per_unit` rows (a row group is never split, a unit never spans files); a CSV file
    is one unit. Deterministic for a given input, so a resumed run plans the same units."""
    units: list[WorkUnit] = []
    for f in sorted(files, key=lambda f: f.path):
        if f.format == "csv" or not f.row_group_rows:
            units.append(WorkUnit(len(units), f.path, f.format, (), 0, f.num_rows))
            continue
        start, first_row, rows = 0, 0, 0
        for i, n in enumerate(f.row_group_rows):
            rows += n
            last = i == len(f.row_group_rows) - 1
            if rows >= rows_per_unit or last:
                groups = tuple(range(start, i + 1))
                units.append(WorkUnit(len(units), f.path, f.format, groups, first_row, rows))
                first_row += rows
                start, rows = i + 1, 0
    return units


# --------------------------------------------------------------------------- manifest


@dataclass
class Manifest:
    """What an output folder holds: the fingerprint of the run that writes it (model
    version, input digest, the settings that change the output) and its work units.

    A unit is complete exactly when its output file exists; the manifest itself is written
    once, when the output is started, and again with a summary when it is complete."""

    fingerprint: dict[str, Any]
    units: list[WorkUnit]
    complete: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": self.format_version,
                "fingerprint": self.fingerprint,
                "complete": self.complete,
                "summary": self.summary,
                "units": [asdict(u) for u in self.units],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        units = [WorkUnit.from_json(json.dumps(u)) for u in data["units"]]
        return cls(
            data["fingerprint"],
            units,
            bool(data.get("complete", False)),
            dict(data.get("summary") or {}),
            int(data.get("format_version", 1)),
        )

    def differences(self, fingerprint: dict[str, Any]) -> list[str]:
        """How `fingerprint` (this run's) differs from the one that started the output."""
        out = []
        for key in sorted(set(self.fingerprint) | set(fingerprint)):
            old, new = self.fingerprint.get(key), fingerprint.get(key)
            if old != new:
                if key == "input_digest":
                    out.append("the input files changed (names, sizes or modification times)")
                else:
                    out.append(f"{key} {old!r} → {new!r}")
        return out


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class ResourcePlan:
    """The actor pool of one run: how many actors, what each reserves, how it computes."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    torch_threads: int
    batch_size: int
    #: The units run in the driver's process, `actors` threads sharing one Predictor, no Ray.
    in_process: bool = False

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor > 0 else "cpu"

    def actor_options(self) -> dict[str, float | None]:
        """What each actor of the pool asks Ray for (`map_batches`' num_cpus/num_gpus): the
        GPU request is what puts an actor on a GPU, so it comes from the plan and is unit
        tested with it (no GPU needed)."""
        return {"num_cpus": self.cpus_per_actor, "num_gpus": self.gpus_per_actor or None}

    def params(self) -> dict[str, float | int]:
        """The plan as MLflow run parameters."""
        return {
            "actors": self.actors,
            "cpus_per_actor": self.cpus_per_actor,
            "gpus_per_actor": self.gpus_per_actor,
            "torch_threads": self.torch_threads,
            "batch_size": self.batch_size,
            "in_process": int(self.in_process),
        }

    def describe(self) -> str:
        gpu = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        threads = "thread" if self.torch_threads == 1 else "threads"
        if self.in_process:
            return (
                f"in this process (no Ray): {self.actors} worker thread"
                f"{'s' if self.actors != 1 else ''}, {self.torch_threads} torch {threads} each, "
                f"batch {self.batch_size:,}"
            )
        return (
            f"{self.actors} actor{'s' if self.actors != 1 else ''} × "
            f"{self.cpus_per_actor:g} CPU{gpu}, {self.torch_threads} torch {threads}, "
            f"batch {self.batch_size:,}"
        )


def plan_resources(
    resources: dict[str, float],
    pending_units: int,
    *,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0.0,
    torch_threads: int | None = None,
    batch_size: int = 65_536,
    gpu_batch_size: int = 262_144,
) -> ResourcePlan:
    """Size the actor pool from the cluster's resources (`ray.cluster_resources()`).

    By default one actor per CPU (per `gpus_per_actor` GPUs on GPUs), never more actors
    than units to do, and each actor reserves a fraction of a CPU so that the pool never
    reserves the whole cluster: on 2 CPUs two actors of 0.9 CPU leave Ray room for its own
    tasks, where two 1-CPU actors would take every CPU. Raises ResourceError for a request
    the cluster can never satisfy.
    """
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    if cpus <= 0:
        raise ResourceError("the Ray cluster has no CPUs")
    if gpus_per_actor > 0:
        if gpus_per_actor > gpus:
            raise ResourceError(
                f"{gpus_per_actor:g} GPU(s) per actor (--gpus / batch.gpus_per_actor) but "
                f"the Ray cluster has {gpus:g} GPUs"
            )
        slots = max(1, math.floor(gpus / gpus_per_actor + 1e-9))
        if actors is not None and actors > slots:
            raise ResourceError(
                f"batch.actors={actors} × {gpus_per_actor:g} GPU(s) but the Ray cluster has "
                f"{gpus:g} GPUs"
            )
    else:
        slots = max(1, math.floor(cpus + 1e-9))
    if cpus_per_actor is not None:
        if cpus_per_actor > cpus:
            raise ResourceError(
                f"batch.cpus_per_actor={cpus_per_actor:g} but the Ray cluster has {cpus:g} CPUs"
            )
        if actors is not None and actors * cpus_per_actor > cpus + 1e-9:
            raise ResourceError(
                f"batch.actors={actors} × batch.cpus_per_actor={cpus_per_actor:g} = "
                f"{actors * cpus_per_actor:g} CPUs but the Ray cluster has {cpus:g}"
            )
        slots = min(slots, max(1, math.floor(cpus / cpus_per_actor + 1e-9)))
    count = actors if actors is not None else slots
    count = max(1, min(count, max(pending_units, 1)))
    if cpus_per_actor is None:
        # A little under a CPU each, rounded down to a hundredth: every node of whole CPUs
        # still fits as many actors as it has CPUs, and the pool never reserves them all.
        cpus_per_actor = min(1.0, math.floor(90 * cpus / count) / 100)
        cpus_per_actor = max(cpus_per_actor, 0.01)
    threads = torch_threads or max(1, math.floor(cpus / count + 1e-9))
    size = gpu_batch_size if gpus_per_actor > 0 else batch_size
    return ResourcePlan(count, cpus_per_actor, float(gpus_per_actor), threads, size)


def usable_resources(
    total: dict[str, float], available: dict[str, float]
) -> tuple[dict[str, float], str | None]:
    """What the actor pool may plan with: the cluster's resources, or only the free CPUs when
    other work (Serve replicas, a Tune run) holds some, so that the pool never waits for
    CPUs that are not released; a note saying so, or ResourceError when none is free."""
    cpus = float(total.get("CPU", 0.0))
    free = float(available.get("CPU", 0.0))
    if cpus <= 0 or free >= cpus - 1e-9:
        return dict(total), None
    if free < 0.05:
        raise ResourceError(
            f"none of the Ray cluster's {cpus:g} CPUs is free (other work, such as Serve "
            "replicas, reserves them all); free some or add a node"
        )
    usable = {**total, "CPU": free}
    return usable, f"{free:g} of {cpus:g} CPUs free: the actor pool is sized to them"


def parse_csv_column_error(message: str, names: list[str]) -> str | None:
    """The column named by an Arrow CSV conversion error ('In CSV column #3: …')."""
    match = re.search(r"CSV column #(\d+)", message)
    if match is None:
        return None
    index = int(match.group(1))
    return names[index] if 0 <= index < len(names) else None

"""Batch inference on Ray Data: a registered model version over Parquet/CSV input, with
exactly-once output that a rerun resumes.

`run_batch` (and `raymlops batch`) plans the run on the driver from metadata alone — the
input's files and their Parquet footers or CSV headers, the model's feature schema, what an
existing output folder already holds — so that bad input fails in a second with the file
and column named, before any compute. The work is then a Ray Data `map_batches` over *work
units* (a run of row groups of a Parquet file, or a CSV file) on a pool of actors, each
holding one verified `Predictor`: an actor reads its unit with pyarrow, predicts batch by
batch, and writes the unit's predictions as one Parquet file that appears atomically. Rows
never pass through Ray's object store and the driver holds only per-unit statistics, so
memory stays bounded whatever the input's size. A small input (`batch.executor: auto`, up
to `batch.local_max_mb`, no GPUs) runs the same units in this process instead, a worker
thread per CPU sharing one Predictor, also when a running cluster is named: starting Ray or
only an actor pool costs more seconds than such an input takes.

Output layout (every name starting with `_` or `.` is ignored by Parquet readers)::

    preds/
      _raymlops_batch.json     manifest: model version, input digest, settings, work units
      part-00000.parquet       one file per unit: pass-through columns, prediction,
      part-00001.parquet       proba_<class>…, model_name, model_version
      _rejects/part-00003.parquet   skipped bad rows of unit 3, with a `reason` column
      .tmp/                    files being written (removed at the end of a run)

Exactly once: a unit is done exactly when its `part-*.parquet` exists, and it only ever
appears by an atomic rename of a complete file. A run that is killed and started again with
the same arguments skips the done units and redoes the others from scratch; an actor that
dies is restarted by Ray and its unit retried, the dead attempt's file never renamed. A run
with other arguments (another model version, changed input files, other settings) on an
existing output is refused instead of mixing two runs' predictions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import sys
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from raymlops.batch.plan import (
    MANIFEST_NAME,
    REJECTS_DIR,
    Manifest,
    ResourcePlan,
    WorkUnit,
    check_schema,
    input_digest,
    plan_resources,
    plan_units,
    scan_input,
    usable_resources,
)
from raymlops.batch.worker import OutputFolder, UnitActor, WorkerSpec, read_unit_stats
from raymlops.core.architecture_params import architecture_names
from raymlops.core.errors import DataError, RaymlopsError, UserInputError
from raymlops.core.report import progress, say
from raymlops.model.features import Preprocessor

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig
    from raymlops.registry.store import Registry

__all__ = ["BatchResult", "run_batch"]


@dataclass
class BatchResult:
    """What a batch run did: counts over the whole output (units done by earlier runs
    included), this run's throughput, and where everything went."""

    output: str
    model_name: str
    model_version: int
    rows_in: int
    rows_out: int
    rows_rejected: int
    units_total: int
    units_run: int
    already_complete: bool
    input_digest: str
    wall_time_s: float
    ray_start_s: float = 0.0  # starting a local Ray for the run (0 when one was running)
    ray_stop_s: float = 0.0  # stopping it again
    #: Rows of this run per second, from the call until the last unit was written, the
    #: starting of a local Ray not counted.
    rows_per_s: float = 0.0
    rows_run: int = 0
    rejects: str | None = None
    run_id: str | None = None
    plan: ResourcePlan | None = None
    nodes: list[str] = field(default_factory=list)
    #: Where the time went, in seconds: scan (input and output metadata), ray_start, model
    #: (the registry lookup, in a thread while Ray starts) and model_wait (how long the run
    #: still waited for it), plan (schema check, manifest), pool_start (until the first actor
    #: was ready), compute (first actor ready to last unit written), finish (manifest,
    #: MLflow), ray_stop.
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def units_skipped(self) -> int:
        """Units an earlier run had already completed."""
        return self.units_total - self.units_run

    def summary(self) -> str:
        """A few lines for a terminal."""
        head = f"batch {self.model_name} v{self.model_version} → {self.output}"
        if self.already_complete:
            head += " (already complete: nothing to do)"
        lines = [
            head,
            f"  rows:       {self.rows_in:,} in, {self.rows_out:,} out, "
            f"{self.rows_rejected:,} rejected" + (f" (→ {self.rejects})" if self.rejects else ""),
            f"  units:      {self.units_total} ({self.units_run} run now, "
            f"{self.units_skipped} done before)",
        ]
        if self.units_run:
            seconds = self.rows_run / self.rows_per_s if self.rows_per_s else 0.0
            local = self.plan is not None and self.plan.in_process
            lines.append(
                f"  throughput: {self.rows_per_s:,.0f} rows/s ({self.rows_run:,} rows in "
                f"{seconds:.1f} s"
                + (")" if local else f"; Ray start-up {self.ray_start_s:.1f} s not counted)")
            )
        if self.plan is not None:
            nodes = f" on {len(self.nodes)} node(s)" if self.nodes else ""
            label = "workers" if self.plan.in_process else "actors"
            lines.append(f"  {label + ':':<11} {self.plan.describe()}{nodes}")
        if self.run_id:
            lines.append(f"  MLflow run: {self.run_id}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "model": self.model_name,
            "version": self.model_version,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_rejected": self.rows_rejected,
            "units_total": self.units_total,
            "units_run": self.units_run,
            "units_skipped": self.units_skipped,
            "already_complete": self.already_complete,
            "input_digest": self.input_digest,
            "wall_time_s": round(self.wall_time_s, 3),
            "ray_start_s": round(self.ray_start_s, 3),
            "ray_stop_s": round(self.ray_stop_s, 3),
            "rows_run": self.rows_run,
            "rows_per_s": round(self.rows_per_s, 1),
            "rejects": self.rejects,
            "run_id": self.run_id,
            "actors": self.plan.actors if self.plan else None,
            "cpus_per_actor": self.plan.cpus_per_actor if self.plan else None,
            "gpus_per_actor": self.plan.gpus_per_actor if self.plan else None,
            "torch_threads": self.plan.torch_threads if self.plan else None,
            "batch_size": self.plan.batch_size if self.plan else None,
            "in_process": self.plan.in_process if self.plan else None,
            "nodes": self.nodes,
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
        }


_PREPROCESSING = "preprocessing.json"  # raymlops.model.predictor.PREPROCESSING (imports torch)
_ENV_TAG = "raymlops.env."  # the registry's tags of the training environment


def _warn_on_environment_change(recorded: dict[str, str], echo: bool) -> None:
    """As Registry.load_predictor: say when the model was trained under other versions."""
    from raymlops.core.environment import environment

    current = environment()
    changed = [
        f"{k} {recorded[k]} → {current[k]}"
        for k in sorted(recorded)
        if k in current and recorded[k] != current[k]
    ]
    if changed:
        say(
            "warning: model was trained under a different environment: " + ", ".join(changed),
            when=echo,
        )


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class _WorkersLost(RaymlopsError):
    """Actors or a whole node of the pool were lost (a machine died, a raylet was killed):
    the units they held are redone, not the run failed."""


def _lost_workers(exc: BaseException) -> BaseException | None:
    """The Ray error in `exc`'s chain that says actors, workers or a node were lost (work
    lost with its process or machine, rather than failed in it), or None."""
    from ray import exceptions as rex

    lost = (rex.RayActorError, rex.NodeDiedError, rex.ObjectLostError, rex.WorkerCrashedError)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, lost):
            found: BaseException = seen
            return found
        seen = seen.__cause__ or seen.__context__
    return None


def _execute(
    pending: list[WorkUnit],
    plan: ResourcePlan,
    spec: WorkerSpec,
    model: tuple[dict[str, bytes], dict[str, str], dict[str, Any]],
    max_retries: int,
    echo: bool,
    results: list[dict[str, Any]],
) -> None:
    """Run the pending units on an actor pool, appending their statistics to `results` as
    they come (so that what finished before a failure is kept).

    Stops at the first unit that reports an error and raises it (DataError for bad input,
    exit code 2; RaymlopsError otherwise); `_WorkersLost` when the pool lost actors or a
    node, which a caller may answer by running the units still without output again."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.enable_progress_bars = False  # one bar of our own, in rows
    ctx.print_on_execution_start = False
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)  # e.g. its notice that its bars are off
    model_files, digests, metadata = model
    ds = ray.data.from_items(
        [{"unit": u.to_json()} for u in pending], override_num_blocks=len(pending)
    )
    options = plan.actor_options()
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for bounding task retries; its default retries a
        # unit whose actor keeps dying (out of memory on every attempt) for ever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        ds = ds.map_batches(
            UnitActor,
            batch_size=1,
            batch_format="numpy",
            # Two units in flight per actor: the next one waits at the actor, so it starts
            # the moment the last one is written (one in flight left a 0.1-0.2 s dispatch gap
            # after every unit); at the end of a run an actor waits for at most one unit.
            compute=ActorPoolStrategy(size=plan.actors, max_tasks_in_flight_per_actor=2),
            fn_constructor_args=(
                model_files,
                digests,
                metadata,
                spec.to_json(),
                plan.device,
                plan.torch_threads,
            ),
            num_cpus=options["num_cpus"],
            num_gpus=options["num_gpus"],
            max_restarts=-1,
            max_task_retries=max_retries,
        )
    known_rows = all(u.num_rows is not None for u in pending)
    total = sum(u.num_rows or 0 for u in pending) if known_rows else len(pending)
    noun = "row" if known_rows else "unit"
    label = f"predicting {total:,} {noun}{'' if total == 1 else 's'}"
    failure: dict[str, Any] | None = None
    try:
        with contextlib.ExitStack() as stack:
            # Drawn on a terminal, one line in logs; nothing unless asked (echo).
            update = (
                stack.enter_context(progress(total, label, show_pos=not known_rows))
                if echo
                else (lambda units: None)
            )
            rows = iter(ds.iter_rows())
            stack.callback(getattr(rows, "close", lambda: None))  # stops the pool at once
            for row in rows:
                result = json.loads(str(row["result"]))
                if "error" in result:
                    failure = result
                    break
                results.append(result)
                update(result["rows_in"] if known_rows else 1)
    except (RaymlopsError, KeyboardInterrupt):
        raise
    except Exception as exc:
        lost = _lost_workers(exc)
        if lost is not None:
            raise _WorkersLost(f"the pool lost workers ({type(lost).__name__})") from exc
        raise RaymlopsError(f"batch inference failed on Ray: {_one_line(exc)}") from exc
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        data_logger.setLevel(level)
    if failure is not None:
        if failure.get("user"):
            raise DataError(str(failure["error"]))
        raise RaymlopsError(f"unit {failure['unit']} ({failure['file']}): {failure['error']}")


@dataclass
class _Model:
    """A registered version as the run needs it: its verified artifact files (for the
    actors), their digests, its metadata and its preprocessing (the feature schema)."""

    version: int
    files: dict[str, bytes]
    digests: dict[str, str]
    metadata: dict[str, Any]
    preprocessor: Preprocessor
    seconds: float


def _resolve_model(
    registry: Registry, name: str, ref: str | int, experiment: str, echo: bool
) -> _Model:
    """Resolve and download a version (digests verified), read its preprocessing; also
    make sure the MLflow experiment exists. No torch: the driver never builds the model."""
    started = time.monotonic()
    folder, info = registry.download(name, ref)
    files = {file: (Path(folder) / file).read_bytes() for file in info.digests}
    preprocessor = Preprocessor.from_dict(json.loads(files[_PREPROCESSING]))
    _warn_on_environment_change(info.tags_under(_ENV_TAG), echo)
    registry.experiment_id(experiment)
    metadata = {
        "name": name,
        "version": info.version,
        "aliases": info.aliases,
        "metrics": info.metrics,
        "run_id": info.run_id,
    }
    return _Model(
        info.version, files, dict(info.digests), metadata, preprocessor, time.monotonic() - started
    )


def _open_manifest(out: OutputFolder, output: str) -> Manifest | None:
    """The output's manifest; None for an empty or new folder; UserInputError for a folder
    that holds something else."""
    text = out.read_text(MANIFEST_NAME)
    if text is None:
        if not out.is_empty():
            raise UserInputError(
                f"--output {output} holds files but no {MANIFEST_NAME}: it is not the "
                "output of raymlops batch; give an empty or new folder"
            )
        return None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{out.path(MANIFEST_NAME)} is unreadable: {exc}") from None


def run_batch(
    config: PipelineConfig,
    input: str,
    output: str,
    *,
    version: str | int | None = None,
    gpus: float | None = None,
    on_bad_rows: str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
    echo: bool = True,
) -> BatchResult:
    """Predict every row of `input` (Parquet/CSV file, folder or URI) with a registered
    version of `config.registry.model_name` into the folder `output`, exactly once.

    `version` is a number or an alias (default `champion`); `gpus` GPUs per actor and
    `on_bad_rows` (`fail`/`skip`) override `config.batch`. `address` joins a running Ray
    cluster (ray://… or auto); without it a local Ray is started for the run, unless this
    process is already connected to one. Neither happens when the units run in this
    process (`batch.executor` local, or auto on a small input). Raises DataError (exit code
    2) for input that does not fit the model, naming the file and column, before any
    compute starts.

    Order of work: the input's and the output's metadata first (a missing or corrupt file
    fails at once, without Ray); then the registry lookup runs in a thread while Ray starts
    (each takes seconds, and they do not depend on each other); then the schema check and
    the manifest, before any unit is computed.
    """
    from raymlops.core.ray_session import ray_session
    from raymlops.registry.store import Registry

    started = time.monotonic()
    marks = {"start": time.time()}  # wall clock: comparable with the actors' timestamps
    request = _request(config, version, gpus, on_bad_rows)
    say(f"▸ batch: {request.name} ({request.ref}), reading the metadata of {input}", when=echo)
    scan = _scan(input, output)
    marks["scanned"] = time.time()

    registry = Registry.from_config(config, home)
    ray_start_s = 0.0
    local = _in_process(config, request, scan, address)
    cluster = (
        local
        and not scan.nothing_left
        and (address or os.environ.get("RAY_ADDRESS") or _connected_ray())
    )
    if cluster:
        say(
            f"▸ a small input (≤ batch.local_max_mb {config.batch.local_max_mb:g} MiB): "
            f"its units run in this process, not on the cluster at {cluster} "
            "(batch.executor: ray uses the cluster)",
            when=echo,
        )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="raymlops-batch") as background:
        lookup = background.submit(
            _resolve_model, registry, request.name, request.ref, config.registry.experiment, echo
        )
        with contextlib.ExitStack() as session:
            if not scan.nothing_left and not local:
                # Ray Data's import takes a second too; done in the thread, after the model.
                background.submit(importlib.import_module, "ray.data")
                ray_started = time.monotonic()
                session.enter_context(ray_session(address))
                ray_start_s = time.monotonic() - ray_started
            model = lookup.result()
            marks["model"] = time.time()
            work = _plan_work(config, request, scan, model, input, output)
            if not work.pending:
                finished = work.result(previous_only=True, wall_time_s=time.monotonic() - started)
                if not work.manifest.complete:  # the last run stopped after its last unit
                    _finish(scan.out, work.manifest, finished)
                say(
                    f"▸ {output} is already complete: {len(work.units)} units, nothing to do",
                    when=echo,
                )
                return finished
            marks["plan"] = time.time()
            finished = _compute(
                config,
                request,
                work,
                model,
                registry,
                session,
                marks,
                echo,
                ray_start_s=ray_start_s,
                started=started,
                local=local,
            )
            stopping = time.monotonic()
        # Leaving the block ends the MLflow run (FINISHED) and stops the local Ray.
        finished.ray_stop_s = time.monotonic() - stopping
    finished.phases["ray_stop"] = finished.ray_stop_s
    finished.wall_time_s = time.monotonic() - started
    return finished


@dataclass
class _Request:
    """What a run was asked for, checked before anything is read."""

    name: str
    ref: str | int
    bad_rows: str
    gpus_per_actor: float
    pass_through: list[str]


def _request(
    config: PipelineConfig, version: str | int | None, gpus: float | None, on_bad_rows: str | None
) -> _Request:
    """The run's arguments with `config.batch`'s defaults filled in; UserInputError for
    values no run could use."""
    settings = config.batch
    bad_rows = on_bad_rows or settings.on_bad_rows
    if bad_rows not in ("fail", "skip"):
        raise UserInputError(f"on_bad_rows must be 'fail' or 'skip', not '{bad_rows}'")
    gpus_per_actor = settings.gpus_per_actor if gpus is None else float(gpus)
    if gpus_per_actor < 0:
        raise UserInputError("--gpus must be at least 0")
    pass_through = list(
        settings.pass_through if settings.pass_through is not None else config.data.id_columns
    )
    return _Request(
        name=config.registry.model_name,
        ref=version if version is not None else "champion",
        bad_rows=bad_rows,
        gpus_per_actor=gpus_per_actor,
        pass_through=pass_through,
    )


@dataclass
class _Scan:
    """The input's files and the output folder as their metadata show them, read without
    Ray: a missing or corrupt file fails here, in a second."""

    files: Any
    in_root: str
    out: OutputFolder
    existing: Manifest | None
    names: set[str]
    digest: str

    @property
    def nothing_left(self) -> bool:
        """Whether an earlier run already wrote every unit (then Ray is not even started)."""
        return self.existing is not None and all(
            u.output_name in self.names for u in self.existing.units
        )


def _scan(input: str, output: str) -> _Scan:
    """Read the input's and the output's metadata; refuse an output inside the input."""
    in_fs, in_root, files = scan_input(input)
    out = OutputFolder(output, run=uuid.uuid4().hex[:12])  # its own temporary folder
    if type(out.fs) is type(in_fs) and _inside(out.root, in_root):
        raise UserInputError(
            f"--output {output} is inside --input {input}: a rerun would read the "
            "predictions as input; choose a folder outside it"
        )
    existing = _open_manifest(out, output)
    return _Scan(files, in_root, out, existing, set(out.names()), input_digest(files, in_root))


@dataclass
class _Work:
    """The run's units (from the manifest), which an earlier run already did, and the
    statistics those left; `result` sums them into a BatchResult."""

    request: _Request
    model_version: int
    output: str
    out: OutputFolder
    n_files: int
    fingerprint: dict[str, Any]
    manifest: Manifest
    done: list[WorkUnit]
    pending: list[WorkUnit]
    previous: list[dict[str, Any]]
    rejects_path: str

    @property
    def units(self) -> list[WorkUnit]:
        return self.manifest.units

    def result(
        self, new: list[dict[str, Any]] | None = None, *, previous_only: bool = False, **extra: Any
    ) -> BatchResult:
        """The BatchResult over the earlier runs' units and `new` (this run's)."""
        stats = self.previous + (new or [])
        rejected = sum(int(s["rows_rejected"]) for s in stats)
        return BatchResult(
            output=self.output,
            model_name=self.request.name,
            model_version=self.model_version,
            rows_in=sum(int(s["rows_in"]) for s in stats),
            rows_out=sum(int(s["rows_out"]) for s in stats),
            rows_rejected=rejected,
            units_total=len(self.units),
            input_digest=str(self.fingerprint["input_digest"]),
            rejects=self.rejects_path if rejected else None,
            units_run=len(new or []),
            already_complete=previous_only,
            **extra,
        )


def _plan_work(
    config: PipelineConfig,
    request: _Request,
    scan: _Scan,
    model: _Model,
    input: str,
    output: str,
) -> _Work:
    """Check the input's schema against the model, then open or write the manifest: the
    last checks before any compute."""
    prep = model.preprocessor
    check_schema(scan.files, prep.numeric, prep.categorical, request.pass_through, prep.classes)
    rows_per_unit = config.batch.rows_per_unit
    fingerprint: dict[str, Any] = {
        "model": request.name,
        "version": model.version,
        "input": input if "://" in input else scan.in_root,
        "input_digest": scan.digest,
        "pass_through": request.pass_through,
        "on_bad_rows": request.bad_rows,
        "rows_per_unit": rows_per_unit,
    }
    manifest = _manifest(scan.existing, fingerprint, scan.files, rows_per_unit, scan.out, output)
    done = [u for u in manifest.units if u.output_name in scan.names]
    return _Work(
        request=request,
        model_version=model.version,
        output=output,
        out=scan.out,
        n_files=len(scan.files),
        fingerprint=fingerprint,
        manifest=manifest,
        done=done,
        pending=[u for u in manifest.units if u.output_name not in scan.names],
        previous=[read_unit_stats(scan.out, u) for u in done],
        rejects_path=f"{scan.out.location.rstrip('/')}/{REJECTS_DIR}",
    )


def _compute(
    config: PipelineConfig,
    request: _Request,
    work: _Work,
    model: _Model,
    registry: Registry,
    session: contextlib.ExitStack,
    marks: dict[str, float],
    echo: bool,
    *,
    ray_start_s: float,
    started: float,
    local: bool = False,
) -> BatchResult:
    """Run the pending units on an actor pool sized to the cluster (`local`: in this
    process), inside an MLflow run of the batch, and mark the output complete."""
    out = work.out
    name, version, units = request.name, model.version, work.units
    say(
        f"▸ {name} v{version}: {len(work.pending)} of {len(units)} units to do"
        + (f" ({len(work.done)} done by an earlier run)" if work.done else "")
        + f", from {work.n_files} file(s) → {work.output}",
        when=echo,
    )
    out.clean_temp()
    run_name = f"batch-{name}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {
        "mlflow.runName": run_name,
        "raymlops.step": "batch",
        "raymlops.model_name": name,
        "raymlops.model_version": str(version),
        "raymlops.input": str(work.fingerprint["input"]),
        "raymlops.input_digest": str(work.fingerprint["input_digest"]),
        "raymlops.output": work.output,
    }
    run_id = session.enter_context(
        registry.run(run_name, tags, experiment=config.registry.experiment)
    )
    marks["execute"] = time.time()
    with out.alive():  # another run into this output leaves our temporary files alone
        if local:
            plan = _local_plan(config, len(work.pending))
            say(f"▸ {plan.describe()}", when=echo)
            new: list[dict[str, Any]] = []
            spec = _worker_spec(config, request, work, model, out, plan)
            _execute_local(work.pending, plan, spec, model, echo, new)
        else:
            new, plan = _run_rounds(config, request, work, model, echo)
    computed = time.monotonic()
    marks["computed"] = time.time()
    missing = [u.output_name for u in units if not out.exists(u.output_name)]
    if missing:
        raise RaymlopsError(
            f"{len(missing)} unit(s) of {work.output} have no output after the run "
            f"({', '.join(missing[:3])}…); run the same command again to finish them"
        )
    rows_run = sum(int(s["rows_in"]) for s in new)
    finished = work.result(
        new,
        wall_time_s=0.0,
        ray_start_s=ray_start_s,
        rows_per_s=rows_run / max(computed - started - ray_start_s, 1e-9),
        rows_run=rows_run,
        run_id=run_id,
        plan=plan,
        nodes=sorted({str(s["node_id"]) for s in new if s.get("node_id")}),
    )
    finished.phases = _phases(marks, new, ray_start_s, model.seconds)
    _finish(out, work.manifest, finished)
    registry.log(
        run_id,
        params={
            "on_bad_rows": request.bad_rows,
            "pass_through": ",".join(request.pass_through),
            "rows_per_unit": config.batch.rows_per_unit,
            **plan.params(),
        },
        metrics=_run_metrics(finished, rows_run, len(units), len(new)),
    )
    finished.phases["finish"] = time.time() - marks["computed"]
    return finished


def _run_rounds(
    config: PipelineConfig, request: _Request, work: _Work, model: _Model, echo: bool
) -> tuple[list[dict[str, Any]], ResourcePlan]:
    """Run the pending units; when the pool loses workers (a node dies), plan a new pool
    on what the cluster has then and run the units still without output, up to
    `batch.max_retries` more rounds. Returns the units' statistics and the last plan.

    A unit's output appears only complete, so a unit finished before the loss is never
    redone and one lost half-way is redone from scratch: every row is written once."""
    out, rounds = work.out, config.batch.max_retries + 1
    model_args = (model.files, model.digests, model.metadata)
    new: list[dict[str, Any]] = []
    pending = list(work.pending)
    for attempt in range(1, rounds + 1):
        plan = _actor_plan(config, request, len(pending), echo)
        spec = _worker_spec(config, request, work, model, out, plan)
        say(f"▸ {plan.describe()}", when=echo)
        try:
            _execute(pending, plan, spec, model_args, config.batch.max_retries, echo, new)
            return new, plan
        except _WorkersLost as lost:
            seen = {int(s["unit"]) for s in new}
            # Units committed before the loss whose statistics never reached this driver.
            new += [read_unit_stats(out, u) for u in pending
                    if u.index not in seen and out.exists(u.output_name)]  # fmt: skip
            pending = [u for u in pending if not out.exists(u.output_name)]
            if not pending:  # the loss came after the last unit was written
                return new, plan
            if attempt == rounds:
                raise RaymlopsError(
                    f"{lost} in each of {rounds} rounds; {len(pending)} unit(s) have no "
                    "output: run the same command again to finish them"
                ) from lost
            pause = min(5.0 * 2 ** (attempt - 1), 30.0)  # let the cluster notice the loss
            say(
                f"▸ {lost}; redoing the {len(pending)} unit(s) without output in "
                f"{pause:.0f} s on what the cluster has then (round {attempt + 1} of {rounds})",
                when=echo,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises


def _in_process(
    config: PipelineConfig, request: _Request, scan: _Scan, address: str | None
) -> bool:
    """Whether the units run in this process instead of on a Ray actor pool
    (`batch.executor`, see its description).

    `auto` decides by the input's size alone, also when a cluster is named (--address,
    RAY_ADDRESS of a Ray job's driver, this process already connected): an actor pool's
    start (~8 s of worker processes importing torch and Ray Data, measured on a running
    two-core Ray) is many times what a small input takes, and the driver has read the
    input's footers already, so it can read its rows. Never with GPUs asked (the driver's
    machine may have none) and never above `local_max_mb`, where the cluster's CPUs pay."""
    executor = config.batch.executor
    if executor == "local":
        if address is not None:
            raise UserInputError("batch.executor 'local' runs without Ray: drop --address")
        if request.gpus_per_actor > 0:
            raise UserInputError("batch.executor 'local' runs on CPUs: drop --gpus")
        return True
    if executor == "ray" or request.gpus_per_actor > 0:
        return False
    size = sum(int(f.size) for f in scan.files)
    return size <= config.batch.local_max_mb * 2**20


def _connected_ray() -> str | None:
    """The address of the Ray this process is already connected to (the pipeline's own
    session), else None; never imports Ray for the question."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # an odd client connection: still connected
        return "this process's Ray"


def _local_plan(config: PipelineConfig, pending: int) -> ResourcePlan:
    """The in-process plan: a worker thread per CPU of this machine (at most one per unit),
    torch threads sharing the CPUs among them."""
    settings = config.batch
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    plan = plan_resources(
        {"CPU": float(cpus or 1)},
        pending,
        actors=settings.actors,
        torch_threads=settings.torch_threads,
        batch_size=settings.batch_size,
    )
    return dataclasses.replace(plan, cpus_per_actor=0.0, in_process=True)


def _execute_local(
    pending: list[WorkUnit],
    plan: ResourcePlan,
    spec: WorkerSpec,
    model: _Model,
    echo: bool,
    results: list[dict[str, Any]],
) -> None:
    """Run the pending units in this process: `plan.actors` threads share one verified
    Predictor (torch and Arrow release the GIL for the heavy work). Statistics are appended
    to `results` as units finish; the first unit error stops the rest and is raised as
    `_execute` raises it. Torch's and Arrow's thread settings are restored afterwards."""
    import torch

    saved = (torch.get_num_threads(), pa.cpu_count())
    total = sum(u.num_rows or 0 for u in pending)
    failure: dict[str, Any] | None = None
    try:
        worker = UnitActor(
            model.files, model.digests, model.metadata, spec.to_json(), "cpu", plan.torch_threads
        )
        # Arrow's pool decodes and encodes for every worker thread, not for one actor.
        pa.set_cpu_count(max(1, plan.actors * plan.torch_threads))
        with contextlib.ExitStack() as stack:
            update = (
                stack.enter_context(progress(total, f"predicting {total:,} rows"))
                if echo and total
                else (lambda rows: None)
            )
            pool = ThreadPoolExecutor(plan.actors, "raymlops-batch-unit")
            # On an error or Ctrl-C the queued units are dropped, not waited for.
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            futures = [pool.submit(worker.run, unit) for unit in pending]
            for future in as_completed(futures):
                result = future.result()
                if "error" in result:
                    failure = result
                    break
                results.append(result)
                update(int(result["rows_in"]))
    finally:
        torch.set_num_threads(saved[0])
        pa.set_cpu_count(saved[1])
    if failure is not None:
        if failure.get("user"):
            raise DataError(str(failure["error"]))
        raise RaymlopsError(f"unit {failure['unit']} ({failure['file']}): {failure['error']}")


def _actor_plan(
    config: PipelineConfig, request: _Request, pending: int, echo: bool
) -> ResourcePlan:
    """How many actors, with how many CPUs/GPUs and threads each, for `pending` units on
    what the cluster has free."""
    import ray

    from raymlops.core.ray_session import cluster_resources

    settings = config.batch
    resources, note = usable_resources(cluster_resources(), ray.available_resources())
    if note:
        say(f"▸ {note}", when=echo)
    return plan_resources(
        resources,
        pending,
        actors=settings.actors,
        cpus_per_actor=settings.cpus_per_actor,
        gpus_per_actor=request.gpus_per_actor,
        torch_threads=settings.torch_threads,
        batch_size=settings.batch_size,
        gpu_batch_size=settings.gpu_batch_size,
    )


def _worker_spec(
    config: PipelineConfig,
    request: _Request,
    work: _Work,
    model: _Model,
    out: OutputFolder,
    plan: ResourcePlan,
) -> WorkerSpec:
    """What every actor needs to know besides the model."""
    prep = model.preprocessor
    return WorkerSpec(
        # Absolute for local paths: actors do not share the driver's working dir.
        input=str(work.fingerprint["input"]),
        output=out.location if "://" in work.output else out.root,
        columns=list(dict.fromkeys([*request.pass_through, *prep.feature_names])),
        numeric=list(prep.numeric),
        pass_through=request.pass_through,
        classes=list(prep.classes) if prep.classes is not None else None,
        on_bad_rows=request.bad_rows,
        batch_size=plan.batch_size,
        compression=config.batch.compression,
        model_name=request.name,
        model_version=model.version,
        architectures=[a for a in architecture_names() if ":" in a],
        run=out.run,
    )


def _manifest(
    existing: Manifest | None,
    fingerprint: dict[str, Any],
    files: Any,
    rows_per_unit: int,
    out: OutputFolder,
    output: str,
) -> Manifest:
    """The output's manifest: a new one (its units planned) written first, or the one an
    earlier run left, when it was a run of the same model on the same input."""
    if existing is None:
        manifest = Manifest(fingerprint, plan_units(files, rows_per_unit))
        out.write_text(MANIFEST_NAME, manifest.to_json())
        return manifest
    differences = existing.differences(fingerprint)
    if differences:
        raise UserInputError(
            f"--output {output} holds the output of another batch run ("
            + "; ".join(differences)
            + "); give a new --output, or delete it to start again"
        )
    return existing


def _phases(
    marks: dict[str, float], new: list[dict[str, Any]], ray_start_s: float, model_s: float
) -> dict[str, float]:
    """Where a run's time went, from the driver's marks and the actors' timestamps."""
    ready = min((s["actor"]["ready_at"] for s in new if "actor" in s), default=None)
    last = max((s["started_at"] + s["seconds"] for s in new), default=None)
    return {
        "scan": marks["scanned"] - marks["start"],
        "ray_start": ray_start_s,
        "model": model_s,
        "model_wait": marks["model"] - marks["scanned"] - ray_start_s,
        "plan": marks["plan"] - marks["model"],
        "pool_start": (ready or marks["computed"]) - marks["execute"],
        "compute": (last or marks["computed"]) - (ready or marks["execute"]),
    }


def _run_metrics(
    finished: BatchResult, rows_run: int, units_total: int, units_run: int
) -> list[tuple[str, float, int]]:
    """The MLflow metrics of a batch run."""
    values: dict[str, float] = {
        "rows_in": finished.rows_in,
        "rows_out": finished.rows_out,
        "rows_rejected": finished.rows_rejected,
        "rows_run": rows_run,
        "rows_per_s": finished.rows_per_s,
        "units_total": units_total,
        "units_run": units_run,
        "nodes": len(finished.nodes),
        **{f"{k}_s": v for k, v in finished.phases.items()},
    }
    return [(k, float(v), 0) for k, v in values.items()]


def _finish(out: OutputFolder, manifest: Manifest, finished: BatchResult) -> None:
    """Mark the output complete: the manifest with a summary, temporary files gone."""
    manifest.complete = True
    manifest.summary = {
        "rows_in": finished.rows_in,
        "rows_out": finished.rows_out,
        "rows_rejected": finished.rows_rejected,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": finished.run_id,
    }
    out.write_text(MANIFEST_NAME, manifest.to_json())
    out.clean_temp()

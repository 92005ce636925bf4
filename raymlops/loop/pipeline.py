"""The pipeline steps as functions: `train_and_register` (data → Tune → registry) and
`run_pipeline` (the main job).

The CLI and the `jobs/` entrypoints are thin shells over these two functions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raymlops.core.config import PipelineConfig
from raymlops.core.errors import UserInputError
from raymlops.core.home import home_dir
from raymlops.core.ray_session import ray_session
from raymlops.core.report import aligned, say
from raymlops.core.storage import (
    is_local,
    join,
    open_location,
    read_bytes,
    storage_root,
    write_bytes,
)
from raymlops.data.dataset import check_source, load_dataset
from raymlops.loop.steps import PIPELINE_STEPS
from raymlops.loop.training import TrainResult, train_and_register
from raymlops.registry.store import CHAMPION, Registry

__all__ = [
    "LOOP_STEPS",
    "LoopState",
    "RunResult",
    "TrainResult",
    "run_loop_step",
    "run_pipeline",
    "train_and_register",
]


@dataclass
class RunResult:
    """`raymlops run`: what each step of the main job produced."""

    train: TrainResult
    champion: int
    sample_predictions: pd.DataFrame = field(repr=False)
    gate: Any = None  # GateResult of the trained version
    served_url: str | None = None
    batch: Any = None  # BatchResult
    monitored: Any = None  # MonitorResult
    retrained: Any = None  # RetrainResult
    card_path: Path | None = None
    report_path: Path | None = None
    wall_time_s: float = 0.0
    steps: list[tuple[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        """The closing lines: each step's time, in columns as wide as the longest step
        name, then where each result lives."""
        timings = [(name, f"{seconds:.1f} s") for name, seconds in self.steps]
        timings.append(("total", f"{self.wall_time_s:.1f} s"))
        where = [("champion now:", f"{self.train.model_name} v{self.champion}")]
        if self.card_path:
            where.append(("model card:", str(self.card_path)))
        if self.report_path:
            where.append(("drift report:", str(self.report_path)))
        if self.batch is not None:
            where.append(("batch output:", str(self.batch.output)))
        where.append(("browse runs:", f"mlflow ui --backend-store-uri {self.train.tracking_uri}"))
        return "\n".join(["", "summary", *aligned(timings, right={1}), *aligned(where)])


def run_pipeline(
    config: PipelineConfig,
    *,
    address: str | None = None,
    home: str | Path | None = None,
    echo: bool = True,
    samples: int = 5,
    full: bool = True,
    keep_serving: bool = False,
) -> RunResult:
    """The main job. `full=False`: train and register, then predict a few rows with the
    champion loaded back from the registry. `full=True` (what `raymlops run` does): the whole
    lifecycle — train → register → gate → promote → serve and answer HTTP requests → batch
    inference → simulated production traffic with drift → monitor → retrain → gate → canary
    → promote — with every step recorded in MLflow and the alias history."""
    if not full:
        return _train_and_sample(config, address=address, home=home, echo=echo, samples=samples)
    # Bad data fails here, in one line, before a Ray is started for the loop (streaming
    # data: the checks its first rows allow; it is never loaded whole).
    if config.data.streaming:
        check_source(config.data, config.features)
    else:
        load_dataset(config.data, config.features)
    with ray_session(address):
        return _closed_loop(config, home=home, echo=echo, samples=samples, keep=keep_serving)


def _train_and_sample(
    config: PipelineConfig,
    *,
    address: str | None,
    home: str | Path | None,
    echo: bool,
    samples: int,
) -> RunResult:
    result = train_and_register(
        config, address=address, home=home, echo=echo, gate_first_version=True
    )
    registry = Registry.from_config(config, home)
    # The champion; the version just trained when it is a first version that failed its gate.
    has_champion = registry.alias_target(config.registry.model_name, CHAMPION) is not None
    predictor = registry.load_predictor(
        config.registry.model_name, CHAMPION if has_champion else result.version.version
    )
    rows = _sample_rows(config, samples)
    prediction = predictor.predict(rows).to_frame()
    shown = pd.concat(
        [rows[[*config.data.id_columns, config.data.label]].reset_index(drop=True), prediction],
        axis=1,
    )
    return RunResult(result, int(predictor.metadata["version"]), shown)


def _rows_of(config: PipelineConfig) -> Any:
    """The config's data as one Arrow table, for steps that need rows of it; with
    `data.streaming` a bounded sample spread over its files, never the whole data."""
    from raymlops.data.dataset import load_table, sample_table

    data = config.data
    if data.streaming:
        return sample_table(data.path, data.format, min(data.stream_sample_rows, _LOOP_ROWS))
    return load_table(data.path, data.format)


def _sample_rows(config: PipelineConfig, samples: int, table: Any = None) -> pd.DataFrame:
    """`samples` rows of the config's data (`table`, when already loaded), seeded."""
    if table is None:
        table = _rows_of(config)
    rng = np.random.default_rng(config.data.split.seed)
    picked = np.sort(rng.choice(table.num_rows, size=min(samples, table.num_rows), replace=False))
    return table.take(picked).to_pandas()


LOOP_STEPS: tuple[str, ...] = PIPELINE_STEPS
_TITLES = {
    "train": "train: Ray Tune search, best trial registered",
    "gate": "gate v{version} against thresholds and the champion",
    "promote": "promote",
    "batch": "batch inference (Ray Data; a small input in this process)",
    "serve": "serve the champion on Ray Serve",
    "traffic": "simulated production traffic with drift",
    "monitor": "monitor: drift against the training profile",
    "retrain": "retrain → gate → canary → promote",
    "finish": "model card and summary",
}
_STATE_FILE = "state.json"
#: Rows of streaming data the loop's traffic and sample steps read (a bounded sample).
_LOOP_ROWS = 20_000


@dataclass
class LoopState:
    """What the steps of one main-job run hand to each other, kept as JSON in the run's
    folder so that a step running as its own Ray job picks up where the previous one left.

    `work` is a local folder (one machine) or a URI under the shared `storage` (a cluster
    whose nodes share no disk: each step's job may run on another node)."""

    work: str
    started: float = field(default_factory=time.time)
    version: int | None = None
    gate_passed: bool | None = None
    gate_run_id: str | None = None
    champion: int | None = None
    batch_output: str | None = None
    served_url: str | None = None
    serving: bool = False
    traffic_since: str | None = None
    traffic_requests: str | None = None
    recent_data: str | None = None
    report_path: str | None = None
    card_path: str | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def create(cls, config: PipelineConfig, home: str | Path | None) -> LoopState:
        """A fresh state in a new run folder: under the shared storage when one is
        configured, else under the home folder."""
        state = cls(new_run_location(config, home))
        state.save()
        return state

    @classmethod
    def load(cls, work: str | Path) -> LoopState:
        location = join(str(work), _STATE_FILE)
        text = read_bytes(location)
        if text is None:
            raise UserInputError(f"no main-job state at {location}")
        data = json.loads(text)
        data["steps"] = [tuple(s) for s in data.get("steps", [])]
        return cls(**data)

    @classmethod
    def exists(cls, work: str | Path) -> bool:
        """Whether a run's state is at `work`."""
        return read_bytes(join(str(work), _STATE_FILE)) is not None

    def save(self) -> None:
        write_bytes(join(self.work, _STATE_FILE), json.dumps(asdict(self), indent=2).encode())

    def file(self, name: str) -> str:
        """The location of a file of this run."""
        return join(self.work, name)


def new_run_location(config: PipelineConfig, home: str | Path | None) -> str:
    """Where a new main-job run keeps its files: `<storage>/runs/<name>-<stamp>-<id>` with a
    shared storage, else the same under `<home>/runs` (created)."""
    name = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    shared = storage_root(config.storage)
    if shared:
        return join(shared, "runs", name)
    folder = home_dir(home) / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder.resolve())


def _write_parquet(frame: pd.DataFrame | Any, location: str) -> None:
    """A frame or Arrow table as one Parquet file at a path or URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = (
        pa.Table.from_pandas(frame, preserve_index=False)
        if isinstance(frame, pd.DataFrame)
        else frame
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(location, sink.getvalue().to_pybytes())


def _read_parquet(location: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    fs, path = open_location(location)
    return pq.read_table(path, filesystem=fs).to_pandas()


class _Loop:
    """The closed loop's steps over one `LoopState`; in-process runs also keep the step
    results (for the RunResult), a step run as a job only what the state file holds."""

    def __init__(
        self,
        config: PipelineConfig,
        state: LoopState,
        *,
        home: str | Path | None,
        echo: bool,
        samples: int = 5,
    ) -> None:
        self.config = config
        self.state = state
        self.home = home_dir(home)
        self.echo = echo
        self.samples = samples
        self.registry = Registry.from_config(config, self.home)
        self.name = config.registry.model_name
        self.by = "raymlops-run"
        self.trained: TrainResult | None = None
        self.gate: Any = None
        self.batch: Any = None
        self.monitored: Any = None
        self.retrained: Any = None
        self.shown = pd.DataFrame()
        self._loaded: Any = None

    def say(self, message: str) -> None:
        say(message, when=self.echo)

    def run_step(self, step: str, number: int | None = None) -> None:
        """Run one step, announced and timed, and save the state after it."""
        if step not in LOOP_STEPS:
            raise UserInputError(f"unknown step '{step}' (steps: {', '.join(LOOP_STEPS)})")
        title = _TITLES[step].format(version=self.state.version)
        number = LOOP_STEPS.index(step) + 1 if number is None else number
        self.say(f"\n[{number}] {title}")
        started = time.monotonic()
        try:
            getattr(self, f"_{step}")()
        finally:
            self.state.steps.append((title, time.monotonic() - started))
            self.state.save()

    # ------------------------------------------------------------------ the steps
    def _train(self) -> None:
        self.trained = train_and_register(self.config, home=self.home, echo=self.echo)
        self.state.version = self.trained.version.version

    def _candidate(self) -> int:
        if self.state.version is None:
            raise UserInputError("the train step has not registered a version in this run")
        return self.state.version

    def _gate(self) -> None:
        from raymlops.loop.gate import run_gate

        version = self._candidate()
        self.gate = run_gate(
            self.registry, self.config, self.name, version, by=self.by, echo=self.say
        )
        self.state.gate_passed = bool(self.gate.passed)
        self.state.gate_run_id = self.gate.run_id
        self.say(self.gate.table())

    def _promote(self) -> None:
        from raymlops.loop.governance import promote_if_passed

        version = self._candidate()
        gate = self.gate if self.gate is not None else self._recorded_gate()
        if self.registry.alias_target(self.name, CHAMPION) == version:
            self.say(f"  v{version} is the first version and passed the gate: champion")
        else:
            decision = promote_if_passed(
                self.registry,
                self.name,
                version,
                gate,
                config=self.config,
                reason="passed the gate",
                by=self.by,
            )
            self.say(f"  {'promoted' if decision.promoted else 'kept'}: {decision.reason}")
        self.state.champion = self.registry.alias_target(self.name, CHAMPION)
        if self.state.champion is None:  # a first version that failed its gate
            failed = ", ".join(f"{c.kind} {c.name}" for c in gate.failed_checks)
            raise UserInputError(
                f"{self.name} v{version} failed the gate ({failed}): no version is champion, "
                f"so nothing is served; see `raymlops gate {self.name} {version}`"
            )

    def _recorded_gate(self) -> Any:
        from raymlops.loop.gate_result import load_gate_result

        gate = load_gate_result(self.registry, self.state.gate_run_id or "")
        if gate is None:
            raise UserInputError("the gate step has not recorded a result in this run")
        return gate

    def _table(self) -> Any:
        """The config's data, loaded once per step process (several steps read it). With
        `data.streaming` a bounded sample spread over its files: the steps that read this
        table (sample requests, simulated traffic) need rows, not all of them."""
        if self._loaded is None:
            self._loaded = _rows_of(self.config)
        return self._loaded

    def _features(self, table: Any) -> list[str]:
        """The columns a request carries: not the label, ids or dropped columns."""
        data = self.config.data
        excluded = {data.label, *data.id_columns, *data.drop_columns}
        return [c for c in table.column_names if c not in excluded]

    def _batch(self) -> None:
        from raymlops.batch.run import run_batch

        if self.config.data.streaming:  # batch streams too: the data as it is, label and all
            batch_in = self.config.data.path
        else:
            batch_in = self.state.file("batch-input.parquet")
            _write_parquet(self._table().drop_columns([self.config.data.label]), batch_in)
        output = self.state.file("batch-output")
        self.batch = run_batch(self.config, batch_in, output, home=self.home)
        self.state.batch_output = output
        self.say(self.batch.summary())

    def _client(self) -> Any:
        from raymlops.serve.api import Client

        if self.state.served_url is None:
            raise UserInputError("the serve step has not deployed an endpoint in this run")
        return Client(self.state.served_url, token=self.config.serve.token)

    def _serve(self) -> None:
        from raymlops.serve.api import serve_model

        status = serve_model(_sharing_serve(self.config), home=self.home, echo=self.echo)
        self.state.served_url = status.url
        self.state.serving = True
        self.state.save()  # a failure below still leaves the endpoint to stop
        rows = _sample_rows(self.config, self.samples, self._table())
        features = self._features(self._table())
        answer = self._client().predict(rows[features])
        self.shown = pd.concat(
            [rows[[self.config.data.label]].reset_index(drop=True), answer.to_frame()], axis=1
        )
        self.say(f"  POST {status.url}/predict → v{answer.version} ({answer.role}):")
        self.say(self.shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    def _traffic(self) -> None:
        from raymlops.loop.simulate import drifted_traffic

        table = self._table()
        self.state.traffic_since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        traffic = drifted_traffic(
            table,
            self.config.data.label,
            self._features(table),
            rows=600,
            shift_std=1.0,
            share=0.5,
            seed=self.config.data.split.seed,
            keep=list(self.config.data.id_columns),
        )
        sent = _send(self._client(), traffic.requests, batch_rows=4)
        self.state.recent_data = self.state.file("recent-labelled.parquet")
        _write_parquet(traffic.labelled, self.state.recent_data)
        self.state.traffic_requests = self.state.file("traffic-requests.parquet")
        _write_parquet(traffic.requests, self.state.traffic_requests)
        self.say(
            f"  {sent} requests ({len(traffic.requests)} rows); shifted by "
            f"{traffic.shift_std:g} std: {', '.join(traffic.shifted[:6])}"
            + ("…" if len(traffic.shifted) > 6 else "")
        )
        # What the replicas buffer reaches the prediction log within a flush interval.
        time.sleep(self.config.serve.prediction_log.flush_interval_s + 1.0)

    def _monitor(self) -> None:
        from raymlops.monitor.run import monitor

        # Stored with the run (a URI on a cluster); also in MLflow.
        location = self.state.file("drift-report.html")
        self.monitored = monitor(
            self.config, since=self.state.traffic_since, home=self.home, report=location
        )
        self.state.report_path = location if self.monitored.report_path else None
        self.say(self.monitored.summary())

    def _retrain(self) -> None:
        from raymlops.loop.retrain import ServingCanary, retrain, retrain_once

        client = self._client()
        if self.state.traffic_requests is None:
            raise UserInputError("the traffic step has not run in this run")
        background = _Background(client, _read_parquet(self.state.traffic_requests))
        canary = ServingCanary(
            self.config,
            home=self.home,
            by="raymlops-retrain",
            on_start=background.start,
            on_end=background.stop,
        )
        try:
            if self.monitored is not None:
                self.retrained = retrain(
                    self.config,
                    monitored=self.monitored,
                    canary=canary,
                    recent_data=self.state.recent_data,
                    home=self.home,
                    echo=self.echo,
                )
            else:  # a step of its own (a Ray job): the policy monitors the same window
                self.retrained = retrain_once(
                    self.config,
                    since=self.state.traffic_since,
                    canary=canary,
                    recent_data=self.state.recent_data,
                    home=self.home,
                    echo=self.echo,
                )
        finally:
            background.stop()
        self.say(self.retrained.summary())
        # Replicas pick up a routing change within a sync interval: ask until the endpoint
        # answers with the champion (or 30 s have passed).
        expected = self.registry.alias_target(self.name, CHAMPION)
        probe = _sample_rows(self.config, 1, self._table())[self._features(self._table())]
        deadline = time.monotonic() + 30
        after = client.predict(probe)
        while after.version != expected and time.monotonic() < deadline:
            time.sleep(0.5)
            after = client.predict(probe)
        self.say(f"  the endpoint now answers with v{after.version}")

    def _finish(self) -> None:
        champion = self.registry.alias_target(self.name, CHAMPION)
        self.state.champion = champion
        if champion is not None:
            from raymlops.loop.cards import render_card

            card = self.state.file("model-card.md")
            write_bytes(card, render_card(self.registry, self.name, champion, fmt="md").encode())
            self.state.card_path = card
            self.say(f"  model card of v{champion}: {card}")

    def stop_serving(self) -> None:
        """Delete the endpoint this run deployed (if it did)."""
        from raymlops.serve.api import serve_stop

        if self.state.serving:
            serve_stop(self.config, home=self.home)
            self.state.serving = False
            self.state.save()

    def summary(self) -> str:
        """The closing lines: step timings and where each result lives."""
        state = self.state
        lines = ["", "summary"]
        rows = [[name, f"{seconds:.1f} s"] for name, seconds in state.steps]
        rows.append(["total", f"{time.time() - state.started:.1f} s"])
        lines += aligned(rows, right={1})
        lines.append(f"  champion now: {self.name} v{state.champion}")
        for label, value in (
            ("model card:  ", state.card_path),
            ("drift report:", state.report_path),
            ("batch output:", state.batch_output),
        ):
            if value:
                lines.append(f"  {label} {value}")
        lines.append(f"  browse runs:  mlflow ui --backend-store-uri {self.registry.tracking_uri}")
        return "\n".join(lines)


def run_loop_step(
    config: PipelineConfig,
    step: str,
    work: str | Path,
    *,
    home: str | Path | None = None,
    keep_serving: bool = False,
    echo: bool = True,
) -> LoopState:
    """One step of the main job, in the run folder `work` that earlier steps left (what
    `raymlops run --address http://…` runs as each Ray job). The finish step also stops the
    endpoint unless `keep_serving`, and prints the summary."""
    location = str(work) if not is_local(str(work)) else str(Path(work).resolve())
    if step == LOOP_STEPS[0] and not LoopState.exists(location):
        state = LoopState(location)  # the chain's first job starts the run
        state.save()
    else:
        state = LoopState.load(location)
    loop = _Loop(config, state, home=home, echo=echo)
    with ray_session(None):
        if step == "finish":
            try:
                loop.run_step(step)
            finally:
                if not keep_serving:
                    loop.stop_serving()
            say(loop.summary(), err=False)
        else:
            loop.run_step(step)
    return loop.state


def _closed_loop(
    config: PipelineConfig,
    *,
    home: str | Path | None,
    echo: bool,
    samples: int,
    keep: bool,
) -> RunResult:
    state = LoopState.create(config, home)
    loop = _Loop(config, state, home=home, echo=echo, samples=samples)
    try:
        for step in LOOP_STEPS:
            loop.run_step(step)
    finally:
        if not keep:
            loop.stop_serving()
    assert loop.trained is not None and state.version is not None
    result = RunResult(
        loop.trained,
        int(state.champion or state.version),
        loop.shown,
        gate=loop.gate,
        served_url=state.served_url,
        batch=loop.batch,
        monitored=loop.monitored,
        retrained=loop.retrained,
        card_path=Path(state.card_path) if state.card_path else None,
        report_path=Path(state.report_path) if state.report_path else None,
        wall_time_s=time.time() - state.started,
        steps=list(state.steps),
    )
    if keep:
        say(f"\nserving {state.served_url} until Ctrl-C", when=echo)
        _wait_for_interrupt()
        loop.stop_serving()
    return result


def _sharing_serve(config: PipelineConfig) -> PipelineConfig:
    """The config with Serve replicas sized to leave one CPU of this Ray to the steps that
    run beside the endpoint (monitoring's Ray Data tasks, the retraining's Tune trials):
    replicas hold their CPUs until Serve scales them down, minutes later."""
    from raymlops.core.ray_session import cluster_resources

    cpus = cluster_resources().get("CPU", 1.0)
    replicas = config.serve.autoscaling.max_replicas
    share = max(0.0, (cpus - 1.0) / replicas)
    if config.serve.cpus_per_replica <= share:
        return config
    serve = config.serve.model_copy(update={"cpus_per_replica": round(share, 3)})
    return config.model_copy(update={"serve": serve})


def _send(client: Any, frame: pd.DataFrame, batch_rows: int) -> int:
    """Send `frame` to the endpoint `batch_rows` rows per request, 8 requests in flight."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [frame.iloc[i : i + batch_rows] for i in range(0, len(frame), batch_rows)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client.predict, chunks))
    return len(chunks)


class _Background:
    """Live traffic while a canary is judged: resampled rows, a few requests at a time."""

    def __init__(self, client: Any, frame: pd.DataFrame) -> None:
        import threading

        self.client = client
        self.frame = frame
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import threading

        self.stop_event.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop_event.is_set():
            picked = rng.integers(0, len(self.frame), size=32)
            chunk = self.frame.iloc[picked]
            try:
                _send(self.client, chunk, batch_rows=1)
            except Exception:  # a failed request is the canary's figures' business
                time.sleep(0.1)

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass

"""Online serving on a real local Ray (one per module), real Ray Serve with its HAProxy
ingress, real HTTP, and a real MLflow SQLite registry.

One application serves the module's model (v1 champion; v2 a good challenger, v3 one that
raises, v4 one that is slow: the same weights under other architectures); a second,
deliberately tiny application serves the slow version for the overload test. Every request
is sent through `raymlops.Client` or raw HTTP; nothing is mocked.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig
from raymlops.data.dataset import load_dataset, synth_dataset
from raymlops.loop.cards import store_card
from raymlops.model.architectures import build_model
from raymlops.model.features import Preprocessor
from raymlops.model.predictor import Predictor
from raymlops.registry.store import Registry, load_predictor
from raymlops.serve.api import (
    Client,
    ServeStatus,
    ServingError,
    prediction_log_root,
    read_prediction_log,
    serve_canary,
    serve_model,
    serve_promote,
    serve_rollback,
    serve_status,
)
from raymlops.train.loop import TrainingArrays, fit, load_best_predictor
from tests.integration.ray_support import local_ray
from tests.ports import free_port

RAISING = "tests.integration.serving_arch:raising"  # same as tests.integration.serving_arch
SLOW = "tests.integration.serving_arch:slow"
MODEL = "serve-clf"
TOKEN = "integration-test-token"

pytestmark = [pytest.mark.integration]


@dataclass
class Served:
    """The module's deployment: its config, registry home, URL and raw rows."""

    config: PipelineConfig
    home: Path
    url: str
    rows: pd.DataFrame
    status: ServeStatus

    @property
    def registry(self) -> Registry:
        return Registry(home=self.home)

    def client(self, **kwargs: Any) -> Client:
        return Client(self.url, token=TOKEN, backoff_s=0.02, **kwargs)

    def records(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        frame = self.rows.iloc[start : start + n]
        return [
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in frame.to_dict(orient="records")
        ]


# --------------------------------------------------------------------------- fixtures


def _config(data: Path, port: int, **serve: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": MODEL,
            "data": {"path": str(data), "label": "label", "id_columns": ["id"]},
            "model": {
                "params": {"depth": 1, "width": 16, "dropout": 0.0},
                # The challengers' architectures: a version's files alone never make a
                # replica import a module (#15).
                "allowed_modules": ["tests.integration.serving_arch"],
            },
            "train": {"epochs": 2, "batch_size": 64, "early_stopping_patience": None},
            "registry": {"model_name": MODEL, "experiment": MODEL},
            "serve": {
                "port": port,
                "token": TOKEN,
                "cpus_per_replica": 0.5,
                "max_body_bytes": 64 * 1024,
                "autoscaling": {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2},
                "alias_poll_interval_s": 0.5,
                # Margins wide enough that a loaded machine does not roll a healthy
                # challenger back; SLOW (0.3 s a batch) still crosses them.
                "canary": {
                    "min_requests": 40,
                    "error_rate_margin": 0.05,
                    "p95_latency_margin_ms": 150,
                },
                "prediction_log": {"flush_interval_s": 0.2},
                **serve,
            },
        }
    )


def _register(home: Path, config: PipelineConfig, data: Path) -> None:
    """v1 trained in this process; v2, v3, v4 its weights under MLP, RAISING and SLOW."""
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    checkpoint = home / "checkpoint"

    def keep(metrics: dict[str, float], folder: Path | None) -> None:
        if folder is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)
            shutil.copytree(folder, checkpoint)

    best = fit(config, arrays, keep)
    champion = load_best_predictor(checkpoint, config, arrays.preprocessor)
    registry = Registry(home=home)
    for architecture in ("mlp", "mlp", RAISING, SLOW):
        spec = {**champion.architecture, "name": architecture}
        model = build_model(architecture, spec["params"], spec["in_features"], spec["out_features"])
        model.load_state_dict(champion.model.state_dict())
        predictor = Predictor(model, champion.preprocessor, spec)
        with registry.pipeline_run(config, f"{MODEL}-{architecture}") as run_id:
            registry.register(config, run_id, predictor, dataset, {"val_loss": best["val_loss"]})
    store_card(registry, MODEL, 1)  # as train_and_register does for every version it registers


@contextmanager
def serving(
    tmp_path_factory: pytest.TempPathFactory, folder: str, **serve: Any
) -> Iterator[Served]:
    """Ray (2 CPUs) in this process, the registry, and the application on a free port, with
    `serve` settings over the module's. Replicas import tests.integration.serving_arch, so
    the repository root goes on the PYTHONPATH they inherit."""
    from ray import serve as ray_serve

    # Replicas leave within 1 s of `serve.delete`/shutdown instead of 5 (no traffic then).
    with local_ray(env={"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}):
        home = tmp_path_factory.mktemp(folder)
        data = home / "data.parquet"
        synth_dataset(str(data), rows=600, features=4, categorical=1, seed=0)
        config = _config(data, free_port(), **serve)
        _register(home, config, data)
        try:
            status = serve_model(config, home=home, echo=False)
            rows = pd.read_parquet(data).drop(columns=["id", "label"])
            yield Served(config, home, status.url, rows, status)
        finally:
            ray_serve.shutdown()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The module's application (see `serving`)."""
    with serving(tmp_path_factory, "serve-home") as app:
        yield app


@pytest.fixture(autouse=True)
def _no_challenger(served: Served) -> Iterator[None]:
    """Every test starts and ends with the champion v1 alone on traffic."""
    yield
    status = serve_status(served.config, home=served.home)
    if status.challenger is not None:
        serve_rollback(served.config, home=served.home, reason="test cleanup")
    registry = served.registry
    if registry.alias_target(MODEL, "champion") != 1:
        registry.set_alias(MODEL, "champion", 1, action="rollback", reason="test cleanup")
    _wait_for(lambda: _answering_versions(served, 10) == {1}, 30, "v1 back on traffic")


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")


def _answering_versions(served: Served, n: int) -> set[int]:
    client = served.client()
    return {client.predict(served.records(1, i)).version for i in range(n)}


def _raw(
    served: Served,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host_port = served.url.removeprefix("http://")
    conn = http.client.HTTPConnection(host_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _auth() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}


class _Load:
    """Clients predicting in background threads until stopped; every outcome is kept."""

    def __init__(self, served: Served, threads: int = 4) -> None:
        self.served = served
        self.versions: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, i: int) -> None:
        client = self.served.client()
        n = 0
        while not self._stop.is_set():
            try:
                version = client.predict(self.served.records(1, (i * 97 + n) % 500)).version
                with self._lock:
                    self.versions[version] += 1
            except Exception as exc:  # every failure is a test failure
                with self._lock:
                    self.failures.append(repr(exc))
            n += 1

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


# --------------------------------------------------------------------------- the endpoint


def test_happy_path_predictions_schema_and_docs(served: Served) -> None:
    client = served.client()
    one = client.predict(served.records(1))
    assert (one.model, one.version, one.role) == (MODEL, 1, "champion")
    assert one.classes == ["0", "1"]
    assert one.probabilities is not None and len(one.probabilities) == 1
    assert sum(one.probabilities[0]) == pytest.approx(1.0, abs=1e-5)
    assert one.request_id

    many = client.predict(served.rows.head(50))
    expected = load_predictor(MODEL, 1, home=served.home).predict(served.rows.head(50))
    assert many.predictions == expected.predictions.tolist()
    assert expected.probabilities is not None and many.probabilities is not None
    np.testing.assert_allclose(many.probabilities, expected.probabilities, rtol=1e-5)
    assert set(many.to_frame().columns) == {"prediction", "proba_0", "proba_1"}

    model = client.model_info()
    assert (model["name"], model["version"], model["task"]) == (MODEL, 1, "classification")
    kinds = {f["name"]: f["kind"] for f in model["features"]}
    assert kinds == {"f0": "numeric", "f1": "numeric", "f2": "numeric", "f3": "numeric",
                     "c0": "categorical"}  # fmt: skip
    assert "val_loss" in model["metrics"]
    assert model["lineage"]["dataset_digest"]

    assert _raw(served, "GET", "/healthz")[0] == 200  # probes need no token
    assert _raw(served, "GET", "/readyz")[0] == 200
    status, _, body = _raw(served, "GET", "/openapi.json", headers=_auth())
    assert status == 200 and "/predict" in json.loads(body)["paths"]
    assert _raw(served, "GET", "/docs", headers=_auth())[0] == 200
    status, _, body = _raw(served, "GET", "/v1/model/card", headers=_auth())
    assert status == 200 and body.startswith(b"# "), body[:200]  # the stored card of v1
    assert served.status.proxy == "haproxy"


# --------------------------------------------------------------------------- the prediction log


def test_prediction_log_holds_exactly_the_requests_sent(served: Served) -> None:
    client = served.client()
    prefix = f"log-{uuid.uuid4().hex[:8]}-"
    sent: dict[str, tuple[list[dict[str, Any]], Any]] = {}
    for i in range(30):
        records = served.records(1 + i % 3, i * 7)
        result = client.predict(records, request_id=f"{prefix}{i}")
        assert result.request_id == f"{prefix}{i}"
        sent[result.request_id] = (records, result)
    root = prediction_log_root(served.config, served.home)

    def logged() -> pd.DataFrame:
        table = read_prediction_log(root).to_pandas()
        return table[table.request_id.str.startswith(prefix)]

    _wait_for(lambda: len(logged()) == sum(len(r) for r, _ in sent.values()), 10, "log rows")
    time.sleep(0.5)  # nothing more arrives
    frame = logged()
    assert len(frame) == sum(len(records) for records, _ in sent.values())
    assert list(frame.columns[:6]) == [
        "request_id", "timestamp", "model_name", "model_version", "role", "latency_ms",
    ]  # fmt: skip
    for request_id, (records, result) in sent.items():
        rows = frame[frame.request_id == request_id]
        assert len(rows) == len(records)
        assert rows.model_version.tolist() == [result.version] * len(records)
        assert rows.role.tolist() == [result.role] * len(records)
        assert rows.prediction.tolist() == result.predictions
        np.testing.assert_allclose(
            rows[["proba_0", "proba_1"]].to_numpy(), np.array(result.probabilities), rtol=1e-6
        )
        for column in ("f0", "f1", "f2", "f3"):
            np.testing.assert_allclose(rows[column].to_numpy(), [r[column] for r in records])
        assert rows.c0.tolist() == [r["c0"] for r in records]
        assert (rows.model_name == MODEL).all() and (rows.latency_ms > 0).all()


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} in a response: not JSON")


def test_bad_inputs_get_their_status_codes(served: Served) -> None:
    good = served.records(1)[0]
    cases: list[tuple[str, bytes, dict[str, str], int, str | None]] = [
        ("malformed JSON", b"{", _auth(), 400, None),
        ("no instances", b"{}", _auth(), 422, "instances"),
        ("empty list", b'{"instances": []}', _auth(), 422, "instances"),
        ("missing feature", json.dumps({"instances": [{k: v for k, v in good.items()
            if k != "f1"}]}).encode(), _auth(), 422, "instances[0].f1"),
        ("unknown feature", json.dumps({"instances": [{**good, "zz": 1}]}).encode(), _auth(),
            422, "instances[0].zz"),
        ("wrong type", json.dumps({"instances": [{**good, "f2": "high"}]}).encode(), _auth(),
            422, "instances[0].f2"),
        ("NaN", json.dumps({"instances": [{**good, "f0": float("nan")}]}).encode(), _auth(),
            422, "instances[0].f0"),
        ("Infinity", json.dumps({"instances": [{**good, "f3": float("inf")}]}).encode(),
            _auth(), 422, "instances[0].f3"),
        # Valid JSON numbers beyond float32: the model's output overflows (#15).
        ("beyond float32", json.dumps({"instances": [good, {**good, **{f"f{i}": 1e300
            for i in range(4)}}]}).encode(), _auth(), 422, "instances[1]"),
        ("no token", json.dumps({"instances": [good]}).encode(),
            {"content-type": "application/json"}, 401, None),
        ("wrong token", json.dumps({"instances": [good]}).encode(),
            {"authorization": "Bearer nope"}, 401, None),
    ]  # fmt: skip
    for name, body, headers, code, field in cases:
        status, response_headers, payload = _raw(served, "POST", "/predict", body, headers)
        assert status == code, f"{name}: {status} {payload!r}"
        assert b"Traceback" not in payload, name
        document = json.loads(payload, parse_constant=_no_constants)  # strict JSON: no NaN
        assert document["error"], name
        if field is not None:
            assert document["field"] == field, name
        if code == 401:
            assert response_headers["www-authenticate"].startswith("Bearer")

    # The overflowing request is in the log as an error (the error-rate KPI counts it).
    overflow = f"overflow-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"instances": [{**good, **{f"f{i}": 1e300 for i in range(4)}}]}).encode()
    status, _, _ = _raw(served, "POST", "/predict", body, {**_auth(), "x-request-id": overflow})
    assert status == 422
    root = prediction_log_root(served.config, served.home)

    def logged() -> pd.DataFrame:
        table = read_prediction_log(root).to_pandas()
        return table[table.request_id == overflow] if "request_id" in table else table

    _wait_for(lambda: len(logged()) == 1, 10, "the overflowing request's log row")
    assert "not a finite number" in logged().error.iloc[0]

    # Over the body limit: refused from the Content-Length, before the body is read.
    huge = json.dumps({"instances": [good] * 2000}).encode()
    assert len(huge) > served.config.serve.max_body_bytes
    status, _, payload = _raw(served, "POST", "/predict", huge, _auth())
    assert status == 413 and b"exceeds" in payload
    assert _raw(served, "GET", "/v1/model")[0] == 401
    assert _raw(served, "GET", "/predict", headers=_auth())[0] == 405
    assert _raw(served, "GET", "/nothing-here", headers=_auth())[0] == 404
    with pytest.raises(ServingError) as info:
        served.client().predict([{**good, "f2": "high"}])
    assert (info.value.status, info.value.field) == (422, "instances[0].f2")


def test_overload_gets_503_quickly(served: Served) -> None:
    """A one-replica application of the slow version that takes one request at a time and
    queues one more: a burst gets fast 503s, and the client's retries still get through.

    The burst is the first traffic on fresh HAProxy-to-replica connections, so requests reach
    the replica's event loop one loop turn apart: a replica that answers a request without
    yielding between Serve's admission and its answer (an inline prediction) admits every
    one of them and serves them serially — all 200, the last after 16 x 0.3 s."""
    tight = served.config.model_copy(deep=True)
    tight.serve = tight.serve.model_copy(
        update={
            "app_name": "tight",
            "route_prefix": "/tight",
            "token": None,
            "max_batch_size": 1,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
            "follow_champion": False,
            "autoscaling": tight.serve.autoscaling.model_copy(
                update={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1}
            ),
        }
    )
    status = serve_model(tight, version=4, home=served.home, echo=False)
    body = json.dumps({"instances": served.records(1)}).encode()
    host_port = status.url.removeprefix("http://").split("/")[0]

    def post(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        conn = http.client.HTTPConnection(host_port, timeout=30)
        try:
            conn.request("POST", "/tight/predict", body, {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            return response.status, time.perf_counter() - started
        finally:
            conn.close()

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(post, range(16)))
    codes = Counter(code for code, _ in outcomes)
    assert set(codes) <= {200, 503}, codes
    assert codes[503] >= 8, codes
    assert codes[200] >= 1, codes
    assert max(s for code, s in outcomes if code == 503) < 2.0  # refused, not queued
    retried = Client(status.url, backoff_s=0.05).predict(served.records(1))
    assert retried.version == 4
    from ray import serve

    serve.delete("tight")


def test_killed_replica_loses_no_request_and_is_replaced(served: Served) -> None:
    import ray
    from ray import serve

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{MODEL}#Ingress#")
    ]
    assert len(names) == 2, names
    client = served.client(max_retries=8)
    started = threading.Event()
    done = Counter[str]()
    lock = threading.Lock()

    def one(i: int) -> int:
        started.set()
        result = client.predict(served.records(1, i % 500))
        with lock:
            done["ok"] += 1
        return result.version

    with ThreadPoolExecutor(200) as pool:
        futures = [pool.submit(one, i) for i in range(1000)]
        started.wait(30)
        _wait_for(lambda: done["ok"] >= 100, 60, "100 answers before the kill")
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        versions = [f.result(timeout=120) for f in futures]
    assert versions == [1] * 1000  # every request answered, after retries where needed

    def live() -> list[str]:
        return [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{MODEL}#Ingress#")
        ]

    def replaced() -> bool:
        app = serve.status().applications[MODEL]
        states = app.deployments["Ingress"].replica_states
        running = sum(n for s, n in states.items() if str(getattr(s, "value", s)) == "RUNNING")
        others = [name for name in live() if name != names[0]]
        return running == 2 and len(others) == 2

    _wait_for(replaced, max(1.0, 30 - (time.monotonic() - killed_at)), "a replacement replica")
    assert _answering_versions(served, 10) == {1}


# --------------------------------------------------------------------------- canary


def test_canary_split_and_manual_rollback(served: Served) -> None:
    status = serve_canary(served.config, 2, percent=30, home=served.home, reason="split test")
    assert (status.champion, status.challenger, status.percent) == (1, 2, 30.0)
    client = served.client()
    _wait_for(
        lambda: 2 in {client.predict(served.records(1)).version for _ in range(20)},
        30,
        "replicas loading v2",
    )
    roles: Counter[str] = Counter()
    with ThreadPoolExecutor(8) as pool:
        for result in pool.map(lambda i: client.predict(served.records(1, i % 500)), range(1000)):
            roles[result.role] += 1
            assert result.version == (2 if result.role == "challenger" else 1)
    share = roles["challenger"] / 1000
    assert 0.25 <= share <= 0.35, roles

    time.sleep(0.6)  # one sync interval: the figures reach the coordinator
    figures = serve_status(served.config, home=served.home).details["since_canary"]
    by_role = {(row["version"], row["role"]): row for row in figures}
    assert by_role[(2, "challenger")]["requests"] >= 250
    assert by_role[(2, "challenger")]["errors"] == 0

    status = serve_rollback(served.config, home=served.home, reason="enough")
    assert status.challenger is None and status.champion == 1
    _wait_for(
        lambda: (
            [e.action for e in served.registry.alias_history(MODEL)][-2:]
            == ["canary-start", "rollback"]
        ),
        20,
        "canary events in the alias history",
    )


def _auto_rollback_events(served: Served, version: int) -> list[Any]:
    return [
        e
        for e in served.registry.alias_history(MODEL)
        if e.action == "auto-rollback" and e.from_version == version
    ]


def test_broken_challenger_is_rolled_back_automatically(served: Served) -> None:
    before = len(_auto_rollback_events(served, 3))
    serve_canary(served.config, 3, percent=50, home=served.home, reason="broken on purpose")
    with _Load(served, threads=6) as load:
        _wait_for(
            lambda: serve_status(served.config, home=served.home).challenger is None,
            60,
            "the automatic rollback",
        )
        time.sleep(0.5)
    assert load.failures == []  # the challenger failed; the champion answered every request
    assert set(load.versions) == {1}
    status = serve_status(served.config, home=served.home)
    rows = {(r["version"], r["role"]): r for r in status.details["since_deploy"]}
    assert rows[(3, "challenger")]["errors"] >= 20
    assert rows[(3, "challenger")]["fallbacks"] == rows[(3, "challenger")]["errors"]

    # The failed rows are in the prediction log (the monitor's error rate), without answers.
    def failed_rows() -> pd.DataFrame:
        log = read_prediction_log(prediction_log_root(served.config, served.home)).to_pandas()
        return log[(log.model_version == 3) & (log.role == "challenger")]

    _wait_for(lambda: len(failed_rows()) > 0, 20, "the failed rows in the prediction log")
    failed = failed_rows()
    assert failed.error.str.startswith("prediction failed").all()
    assert failed.prediction.isna().all()
    _wait_for(lambda: len(_auto_rollback_events(served, 3)) > before, 20, "the event")
    event = _auto_rollback_events(served, 3)[-1]
    assert (event.alias, event.to_version) == ("challenger", 1)
    assert "error rate" in event.reason
    assert event.details["challenger"]["errors"] >= 20
    assert served.registry.alias_target(MODEL, "champion") == 1


def test_slow_challenger_is_rolled_back_on_latency(served: Served) -> None:
    serve_canary(served.config, 4, percent=50, home=served.home)
    with _Load(served, threads=8) as load:
        _wait_for(
            lambda: serve_status(served.config, home=served.home).challenger is None,
            60,
            "the automatic rollback",
        )
    assert load.failures == []
    assert 4 in load.versions  # it answered (slowly) until rolled back
    _wait_for(lambda: bool(_auto_rollback_events(served, 4)), 20, "the event")
    assert "p95 latency" in _auto_rollback_events(served, 4)[-1].reason


def test_shadow_answers_are_logged_never_returned(served: Served) -> None:
    serve_canary(served.config, 2, percent=0, shadow_percent=100, home=served.home)
    client = served.client()
    _wait_for(lambda: _shadow_rows(served, client) > 0, 30, "shadow answers in the log")
    results = [client.predict(served.records(1, i)) for i in range(20)]
    assert {(r.version, r.role) for r in results} == {(1, "champion")}


def _shadow_rows(served: Served, client: Client) -> int:
    request_id = f"shadow-{uuid.uuid4().hex}"
    client.predict(served.records(1), request_id=request_id)
    time.sleep(0.5)
    table = read_prediction_log(prediction_log_root(served.config, served.home)).to_pandas()
    mine = table[table.request_id == request_id]
    return int((mine.role == "shadow").sum()) if len(mine) else 0


# --------------------------------------------------------------------------- switching versions


def test_promote_under_load_then_rollback(served: Served) -> None:
    serve_canary(served.config, 2, percent=20, home=served.home)
    registry = served.registry
    with _Load(served) as load:
        _wait_for(lambda: load.versions[2] > 0, 30, "v2 answering part of the traffic")
        status = serve_promote(served.config, home=served.home, reason="canary looked fine")
        assert (status.champion, status.challenger) == (2, None)
        assert registry.alias_target(MODEL, "champion") == 2
        seen = sum(load.versions.values())
        _wait_for(lambda: sum(load.versions.values()) > seen + 50, 30, "traffic after promote")
        _wait_for(lambda: _answering_versions(served, 10) == {2}, 30, "v2 alone")
        status = serve_rollback(served.config, home=served.home, reason="changed my mind")
        assert status.champion == 1
        _wait_for(lambda: _answering_versions(served, 10) == {1}, 30, "v1 again")
    assert load.failures == []
    history = [(e.action, e.from_version, e.to_version) for e in registry.alias_history(MODEL)]
    assert ("promote", 1, 2) in history and ("rollback", 2, 1) in history
    assert registry.alias_target(MODEL, "champion") == 1


def test_endpoint_follows_the_registry_alias_without_failures(served: Served) -> None:
    registry = served.registry
    with _Load(served) as load:
        registry.set_alias(MODEL, "champion", 2, action="promote", reason="raymlops promote")
        _wait_for(lambda: _answering_versions(served, 10) == {2}, 30, "the switch to v2")
        registry.set_alias(MODEL, "champion", 1, action="rollback", reason="back")
        _wait_for(lambda: _answering_versions(served, 10) == {1}, 30, "the switch back")
    assert load.failures == []
    assert load.versions[1] > 0 and load.versions[2] > 0


# --------------------------------------------------------------------------- the CLI


def test_cli_status_canary_promote_rollback(served: Served) -> None:
    """The `raymlops serve …` commands against this process's Ray, as a user types them."""
    config_file = served.home / "pipeline.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(served.config.model_dump(mode="json")))
    runner = CliRunner()
    base = ["-c", str(config_file), "--home", str(served.home)]

    result = runner.invoke(cli, ["serve", "status", *base, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert (document["champion"], document["proxy"], document["status"]) == (
        1,
        "haproxy",
        "RUNNING",
    )
    assert document["deployments"]["Ingress"]["replicas"] == {"RUNNING": 2}

    result = runner.invoke(cli, ["serve", "canary", *base, "--version", "2", "--percent", "5"])
    assert result.exit_code == 0, result.output
    assert "challenger v2 (5% answered" in result.output
    result = runner.invoke(cli, ["serve", "canary", *base, "--version", "99"])
    assert result.exit_code == 2 and "no version 99" in result.output
    result = runner.invoke(cli, ["serve", "promote", *base, "--reason", "cli"])
    assert result.exit_code == 0 and "champion v2, no challenger" in result.output
    result = runner.invoke(cli, ["serve", "rollback", *base])
    assert result.exit_code == 0 and "champion v1" in result.output
    result = runner.invoke(cli, ["serve", "rollback", *base])
    assert result.exit_code == 2 and "nothing to roll back" in result.output

    # What `serve deploy` would import: the application built from the same config.
    from ray.serve.deployment import Application

    from raymlops.serve.api import app_builder

    app = app_builder({"config": str(config_file), "home": str(served.home)})
    assert isinstance(app, Application)


def test_cli_status_without_config_finds_the_running_app(served: Served) -> None:
    """Without -c the embedded default would name 'breast-cancer'; the application this
    module serves is found instead, and a wrong --app is told which ones run."""
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "status", "--home", str(served.home), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert (document["app"], document["url"], document["champion"]) == (MODEL, served.url, 1)

    result = runner.invoke(cli, ["serve", "promote", "--home", str(served.home), "--app", "nope"])
    assert result.exit_code == 2, result.output
    assert "no application 'nope'" in result.output and f"running here: {MODEL}" in result.output


def test_stop_without_config_on_a_given_cluster_refuses_several_apps(served: Served) -> None:
    """On a cluster raymlops did not start (this process's Ray), two raymlops applications
    may be different people's: `serve stop` with no -c/--app stops neither and names both;
    --app stops that one, whose URL then stops answering while the other's still does."""
    from ray import serve

    document = served.config.model_dump(mode="json")
    document["serve"].update(app_name="second", route_prefix="/second")
    document["serve"]["autoscaling"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
    runner = CliRunner()
    home = ["--home", str(served.home)]
    try:
        second = serve_model(PipelineConfig.model_validate(document), home=served.home, echo=False)
        assert second.url == f"{served.url}/second"

        refused = runner.invoke(cli, ["serve", "stop", *home])
        assert refused.exit_code == 2, refused.output
        assert f"second, {MODEL}" in refused.output and "--app NAME" in refused.output
        assert served.client().ready() and Client(second.url).ready()

        stopped = runner.invoke(cli, ["serve", "stop", *home, "--app", "second"])
        assert stopped.exit_code == 0, stopped.output
        assert stopped.output.strip() == "stopped: application second"
        gone = Client(second.url, max_retries=0)
        _wait_for(lambda: not gone.ready(), 30, "the second application to stop answering")
        assert served.client().ready()
    finally:
        if "second" in serve.status().applications:
            serve.delete("second")

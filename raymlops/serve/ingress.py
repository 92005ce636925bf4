"""The Serve application's HTTP `Ingress`: validation, routing, the batching queues
(raymlops.serve.batch_queue) over `Predictor.predict`, the prediction log, metrics and the
model's documents (see raymlops.serve.app)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic_core import to_json
from ray import serve

from raymlops.core.architecture_params import params_schema
from raymlops.core.config import ServeConfig
from raymlops.data.prediction_log import model_log_root
from raymlops.serve.app_shared import (
    _BATCH_ROWS_BUCKETS,
    _REQUEST_ID,
    SYNC_INTERVAL_S,
    _Disconnected,
    _error_body,
    _header,
    _Item,
    _Loaded,
    _Outcome,
    _PendingMetrics,
    _registry,
    _send,
    keep_replica_grpc_on_loopback,
    logger,
    on_sigterm,
)
from raymlops.serve.batch_queue import BatchQueue
from raymlops.serve.canary import (
    CHALLENGER,
    CHAMPION,
    LATENCY_BUCKETS_MS,
    SHADOW,
    RoutingTable,
    StatsBook,
    choose_route,
)
from raymlops.serve.prediction_log import LogChunk, PredictionLogWriter, compaction_lock
from raymlops.serve.read_deadline import receive_by
from raymlops.serve.schema import ParsedRequest, RequestError, RequestSchema

__all__ = ["Ingress"]


# --------------------------------------------------------------------------- ingress


def _failed_chunk(
    request_id: str,
    loaded: _Loaded,
    columns: dict[str, np.ndarray],
    elapsed: float,
    error: str,
    role: str,
) -> LogChunk:
    """The prediction-log rows of a request the model failed on: inputs, no predictions."""
    rows = len(next(iter(columns.values()))) if columns else 0
    empty = np.full(rows, None if loaded.classes is not None else np.nan, dtype=object)
    if loaded.classes is None:
        empty = empty.astype(np.float64)
    return LogChunk(
        request_id, time.time(), loaded.version, role, elapsed, columns, empty, None, error
    )


def _first_non_finite(outcome: _Outcome) -> int | None:
    """The first row whose prediction or probabilities are NaN or infinite, or None."""
    rows = len(outcome.predictions)
    bad = np.zeros(rows, dtype=bool)
    if outcome.predictions.dtype.kind == "f":
        bad |= ~np.isfinite(outcome.predictions.reshape(rows, -1)).all(axis=1)
    if outcome.probabilities is not None:
        bad |= ~np.isfinite(np.asarray(outcome.probabilities).reshape(rows, -1)).all(axis=1)
    found = np.flatnonzero(bad)
    return int(found[0]) if found.size else None


@dataclass
class _Answer(_Outcome):
    """An outcome with its rows' warnings: None when no row has one, else one entry per
    row (None for a row without), e.g. `{"unseen_category": {"colour": "purple"}}`; and
    `finite`: every output is known to be a finite number (checked once for its batch)."""

    warnings: list[dict[str, Any] | None] | None = None
    finite: bool = False


def _unseen_warnings(
    loaded: _Loaded, columns: dict[str, np.ndarray], sizes: list[int]
) -> list[list[dict[str, Any] | None] | None]:
    """Per request of a batch (`sizes` rows each, in the order of `columns`), its rows'
    unseen-category warnings, or None for a request without any. Vectorised over the batch:
    Python per row only for rows that have an unseen value."""
    per_request: list[list[dict[str, Any] | None] | None] = [None] * len(sizes)
    if not loaded.schema.categorical:
        return per_request
    try:
        found = loaded.predictor.preprocessor.unseen_categories(columns)
    except Exception as exc:  # the rows were predicted: answer them, without warnings
        logger.warning("raymlops: checking v%s's categories failed: %r", loaded.version, exc)
        return per_request
    if not found:
        return per_request
    bounds = np.cumsum([0, *sizes])
    for column, (rows, values) in found.items():
        owners = np.searchsorted(bounds, rows, side="right") - 1
        for row, owner, value in zip(rows.tolist(), owners.tolist(), values, strict=True):
            start = int(bounds[owner])
            entries = per_request[owner]
            if entries is None:
                entries = per_request[owner] = [None] * sizes[owner]
            entry = entries[row - start]
            if entry is None:
                entry = entries[row - start] = {"unseen_category": {}}
            entry["unseen_category"][column] = value
    return per_request


class Ingress:
    """HTTP endpoint and model replica in one process (see the module docstring)."""

    async def __init__(self, coordinator: Any, args: dict[str, Any]) -> None:  # type: ignore[misc]
        import torch

        keep_replica_grpc_on_loopback()
        self.args = args
        self.cfg = ServeConfig.model_validate(args["serve"])
        for architecture in args.get("architectures") or []:
            params_schema(architecture)  # the deploying config's user architectures
        torch.set_num_threads(self.cfg.torch_threads)
        self.model = str(args["model_name"])
        self.registry = _registry(args)
        self.coordinator = coordinator
        self.max_body = self.cfg.max_body_bytes
        self.token_digest: str | None = args.get("token_sha256")
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.loaded: dict[int, _Loaded] = {}
        self.load_errors: dict[int, str] = {}
        self.stats = StatsBook()
        self.pending = _PendingMetrics()
        # Unseen categorical values in answered rows per (version, column), since the last
        # report (on the event loop only, as `_answer` runs there).
        self.pending_unseen: dict[tuple[int, str], int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._load_lock = asyncio.Lock()
        self._challenger_pool = ThreadPoolExecutor(1, thread_name_prefix="raymlops-challenger")
        size, wait = self.cfg.max_batch_size, self.cfg.batch_wait_timeout_s
        self._champion_queue: BatchQueue[_Item, _Outcome] = BatchQueue(
            self._champion_batch, max_batch_size=size, batch_wait_timeout_s=wait, name="champion"
        )
        self._challenger_queue: BatchQueue[_Item, _Outcome] = BatchQueue(
            self._challenger_batch, max_batch_size=size, batch_wait_timeout_s=wait,
            name="challenger",
        )  # fmt: skip
        self._metrics()
        self.log: PredictionLogWriter | None = None
        self._reported_dropped = self._reported_lost = 0
        if self.cfg.prediction_log.enabled and args.get("log_root"):
            plc = self.cfg.prediction_log
            self.log = PredictionLogWriter(
                args["log_root"],
                self.model,
                flush_interval_s=plc.flush_interval_s,
                max_rows_per_flush=plc.max_rows_per_flush,
                max_buffered_rows=plc.max_buffered_rows,
                # On this node's disk: what a killed replica left unwritten is counted by
                # the others (raymlops.serve.log_ledger).
                ledger_root=Path(args["home"]) / "serve" / "log-ledgers",
                owner=f"{self.model} replica {self.replica_id}",
                compact_every_s=plc.compact_every_s,
                compaction_lock=compaction_lock(
                    model_log_root(args["log_root"], self.model), self.registry, self.model
                ),
            )
            # SIGTERM: write the buffer; rows answered after it are written before their
            # answer leaves (the writer is closed), however the process ends.
            on_sigterm(self._close)
        table = RoutingTable.from_dict(
            await self.coordinator.sync.remote(self.replica_id, [], [], {})
        )
        self.routing = RoutingTable(champion=table.champion)
        await self._apply(table, required=True)
        self._sync_task = self._spawn(self._sync_forever())
        self.api = self._build_api()

    def __serve_build_asgi_app__(self) -> Any:
        handler = self._asgi

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            # A plain coroutine function: uvicorn detects ASGI 3 from it (not from a method).
            await handler(scope, receive, send)

        return app

    def __del__(self) -> None:
        self._close()

    def _close(self) -> None:
        """Write every buffered log row; rows logged later are written as they come."""
        log = getattr(self, "log", None)
        if log is not None:
            log.close()

    async def _shutdown(self) -> None:
        """Serve stops this replica (redeploy, scale-down, `serve stop`), its requests
        drained: let shadow answers finish, write the log, report the last figures."""
        shadows = [t for t in self._tasks if t is not self._sync_task]
        if shadows:
            await asyncio.wait(shadows, timeout=5.0)
        for queue in (self._champion_queue, self._challenger_queue):
            queue.close()  # their worker tasks end with the replica (requests are drained)
        await asyncio.to_thread(self._close)
        self._flush_metrics()

    # ------------------------------------------------------------------ ASGI
    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if path == "/predict" and scope["method"] == "POST":
            await self._predict(scope, receive, send)
            return
        if path == "/healthz":
            await _send(send, 200, b'{"status":"ok"}')
            return
        if path == "/readyz":
            ready = self.routing.champion in self.loaded
            body = {
                "status": "ready" if ready else "loading",
                "version": self.routing.champion,
                "deployment": self.args["deploy_id"],
            }
            await _send(send, 200 if ready else 503, json.dumps(body).encode())
            return
        if self.token_digest is not None and not self._authorized(scope):
            await self._unauthorized(send, self._request_id(scope))
            return
        await self.api(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _request_id(self, scope: dict[str, Any]) -> str:
        given = _header(scope, b"x-request-id")
        if given:
            text = given.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
        return uuid.uuid4().hex

    def _authorized(self, scope: dict[str, Any]) -> bool:
        value = _header(scope, b"authorization")
        if value is None or value[:7].lower() != b"bearer ":
            return False
        digest = hashlib.sha256(value[7:].strip()).hexdigest()
        assert self.token_digest is not None
        return hmac.compare_digest(digest, self.token_digest)

    async def _unauthorized(self, send: Any, request_id: str) -> None:
        body = _error_body("missing or invalid bearer token", request_id)
        await _send(send, 401, body, [(b"www-authenticate", b'Bearer realm="raymlops"')])

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes:
        """The request's body, read within the deadline (408 past it): where no front read
        it first (Serve's proxy on a cluster elsewhere), a stalled upload holds this
        replica's slot that long at most."""
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise RequestError(413, f"body of {int(length)} bytes exceeds {self.max_body}")
        chunks: list[bytes] = []
        size = 0
        timeout = self.cfg.request_read_timeout_s
        until = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                message = await receive_by(receive, until)
            except asyncio.TimeoutError:
                raise RequestError(408, f"the request was not read within {timeout:g} s") from None
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(413, f"body exceeds {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # ------------------------------------------------------------------ /predict
    async def _predict(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        request_id = self._request_id(scope)
        try:
            if self.token_digest is not None and not self._authorized(scope):
                await self._unauthorized(send, request_id)
                return
            body = await self._read_body(scope, receive)
            routing = self.routing
            champion = self.loaded[routing.champion]
            parsed = champion.schema.parse(body)
            role, mirror = choose_route(routing)
            answer, columns = champion, parsed.columns
            outcome: _Outcome | BaseException | None = None
            if role == CHALLENGER and routing.challenger is not None:
                challenger = self.loaded[routing.challenger]
                item = self._item(challenger, parsed)
                if item is None:  # the challenger cannot read these rows: the champion answers
                    self.stats.get(challenger.version, CHALLENGER).fallbacks += 1
                else:
                    outcome = await self._predicted(self._challenger_queue, item)
                    if isinstance(outcome, BaseException):
                        # Counted against the challenger; the champion answers instead.
                        elapsed = (time.perf_counter() - started) * 1000
                        self._record(challenger.version, CHALLENGER, elapsed, error=True)
                        self.stats.get(challenger.version, CHALLENGER).fallbacks += 1
                        if self.log is not None:  # the challenger's error rate, per version
                            message = f"prediction failed ({type(outcome).__name__})"
                            self.log.append(
                                _failed_chunk(
                                    request_id, challenger, item.columns, elapsed, message,
                                    CHALLENGER,
                                )
                            )  # fmt: skip
                        outcome = None
                    else:
                        answer, columns = challenger, item.columns
            if outcome is None:
                role = CHAMPION
                # Always through the batch queue, even alone in the replica: the await is
                # where Serve's admission control (max_ongoing_requests, then
                # max_queued_requests → 503) sees this request as ongoing. Predicting inline
                # here ran each request from admission to answer without yielding, so
                # requests arriving one loop turn apart were all admitted and served
                # serially (a burst of 16 past a queue of 1: no 503, the last after 16x).
                outcome = await self._predicted(
                    self._champion_queue, _Item(champion, columns, parsed.rows)
                )
            if isinstance(outcome, BaseException):
                elapsed = (time.perf_counter() - started) * 1000
                self._record(champion.version, CHAMPION, elapsed, error=True)
                logger.error("raymlops: v%s failed: %r", champion.version, outcome)
                message = f"prediction failed ({type(outcome).__name__})"
                if self.log is not None:  # the failed rows count in the error-rate KPI
                    self.log.append(
                        _failed_chunk(request_id, champion, columns, elapsed, message, CHAMPION)
                    )
                await _send(send, 500, _error_body(message, request_id))
                return
            if not await self._answer(send, request_id, started, answer, role, columns,
                                      outcome):  # fmt: skip
                return
            if mirror and routing.challenger is not None and routing.challenger in self.loaded:
                self._spawn(self._shadow(self.loaded[routing.challenger], parsed, request_id))
        except RequestError as err:
            # An unread body's rest would be taken for the next request: close after a 408.
            close = [(b"connection", b"close")] if err.status == 408 else None
            await _send(send, err.status, _error_body(err.message, request_id, err.field), close)
        except _Disconnected:
            return
        except Exception as exc:  # never a traceback in a response
            logger.exception("raymlops: /predict failed")
            message = f"internal error ({type(exc).__name__})"
            await _send(send, 500, _error_body(message, request_id))

    async def _answer(
        self,
        send: Any,
        request_id: str,
        started: float,
        answer: _Loaded,
        role: str,
        columns: dict[str, np.ndarray],
        outcome: _Outcome,
    ) -> bool:
        """Send the predictions (200) and log them; or, when an output is not a finite
        number (inputs far outside what the model was trained on overflow float32), a 422
        naming the row instead of invalid JSON with NaN in it, counted as an error in the
        metrics and the log. Returns whether the request was answered with predictions."""
        finite = isinstance(outcome, _Answer) and outcome.finite
        bad = None if finite else _first_non_finite(outcome)
        if bad is not None:
            elapsed = (time.perf_counter() - started) * 1000
            self._record(answer.version, role, elapsed, error=True)
            message = (
                f"instances[{bad}]: the model's output is not a finite number (an input far "
                "outside the range it was trained on?)"
            )
            if self.log is not None:
                self.log.append(_failed_chunk(request_id, answer, columns, elapsed, message, role))
            await _send(send, 422, _error_body(message, request_id, f"instances[{bad}]"))
            return False
        response: dict[str, Any] = {
            "predictions": outcome.predictions.tolist(),
            "model": self.model,
            "version": answer.version,
            "role": role,
            "request_id": request_id,
        }
        if outcome.probabilities is not None:
            response["probabilities"] = outcome.probabilities.tolist()
            response["classes"] = answer.classes
        if isinstance(outcome, _Answer) and outcome.warnings is not None:
            response["warnings"] = outcome.warnings
            self._count_unseen(answer.version, outcome.warnings)
        payload = to_json(response)
        elapsed = (time.perf_counter() - started) * 1000
        if self.log is not None:  # logged before answered: a kill in between is counted lost
            self.log.append(
                LogChunk(
                    request_id,
                    time.time(),
                    answer.version,
                    role,
                    elapsed,
                    columns,
                    outcome.predictions,
                    outcome.probabilities,
                )
            )
        await _send(send, 200, payload)
        self._record(answer.version, role, elapsed)
        return True

    def _count_unseen(self, version: int, warnings: list[dict[str, Any] | None]) -> None:
        """Count an answered request's unseen values per column (metric
        raymlops_unseen_categories, reported with the others)."""
        pending = self.pending_unseen
        for warning in warnings:
            if warning is not None:
                for column in warning.get("unseen_category", ()):
                    key = (version, column)
                    pending[key] = pending.get(key, 0) + 1

    def _item(self, loaded: _Loaded, parsed: ParsedRequest) -> _Item | None:
        """The request as `loaded` reads it; None when its schema rejects the rows."""
        if loaded.schema.names == parsed.names:
            return _Item(loaded, parsed.columns, parsed.rows)
        try:
            columns = loaded.schema.parse_records(parsed.records).columns
        except RequestError:
            return None
        return _Item(loaded, columns, parsed.rows)

    async def _shadow(self, challenger: _Loaded, parsed: ParsedRequest, request_id: str) -> None:
        started = time.perf_counter()
        item = self._item(challenger, parsed)
        if item is None:
            self.stats.get(challenger.version, SHADOW).fallbacks += 1
            return
        outcome = await self._predicted(self._challenger_queue, item)
        elapsed = (time.perf_counter() - started) * 1000
        if isinstance(outcome, BaseException):
            self._record(challenger.version, SHADOW, elapsed, error=True)
            return
        self._record(challenger.version, SHADOW, elapsed)
        if self.log is not None:
            self.log.append(
                LogChunk(
                    request_id,
                    time.time(),
                    challenger.version,
                    SHADOW,
                    elapsed,
                    item.columns,
                    outcome.predictions,
                    outcome.probabilities,
                )
            )

    def _record(self, version: int, role: str, latency_ms: float, error: bool = False) -> None:
        self.stats.record(version, role, latency_ms, error)
        key = (version, role)
        pending = self.pending
        bucket = pending.latencies.get(key)
        if bucket is None:
            bucket = pending.latencies[key] = []
        bucket.append(latency_ms)
        if error:
            pending.errors[key] = pending.errors.get(key, 0) + 1

    # ------------------------------------------------------------------ batches
    @staticmethod
    async def _predicted(
        queue: BatchQueue[_Item, _Outcome], item: _Item
    ) -> _Outcome | BaseException:
        """`item`'s outcome from its batch, or the error it got (answered, not raised)."""
        try:
            return await queue.submit(item)
        except Exception as exc:
            return exc

    async def _champion_batch(self, items: list[_Item]) -> list[_Outcome | BaseException]:
        """The champion's requests, predicted together on the event loop (fast models)."""
        return self._run_batch(items)

    async def _challenger_batch(self, items: list[_Item]) -> list[_Outcome | BaseException]:
        """Challenger and shadow requests, predicted in a thread of their own: a slow or
        stuck challenger cannot hold up the champion's requests."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._challenger_pool, self._run_batch, items)

    def _run_batch(self, items: list[_Item]) -> list[_Outcome | BaseException]:
        results: list[_Outcome | BaseException] = []
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.loaded.version, []).append(i)
        slots: list[_Outcome | BaseException | None] = [None] * len(items)
        for version, indices in groups.items():
            group = [items[i] for i in indices]
            loaded = group[0].loaded
            try:
                if len(group) == 1:
                    columns = group[0].columns
                else:
                    columns = {
                        name: np.concatenate([g.columns[name] for g in group])
                        for name in loaded.schema.names
                    }
                prediction = loaded.predictor.predict(columns)
                warnings = _unseen_warnings(loaded, columns, [items[i].rows for i in indices])
            except Exception as exc:
                for i in indices:
                    slots[i] = exc
                continue
            start = 0
            probabilities = prediction.probabilities
            # Once per batch, not per request: the common case leaves `_answer` nothing to do.
            finite = _first_non_finite(_Outcome(prediction.predictions, probabilities)) is None
            for i, warned in zip(indices, warnings, strict=True):
                end = start + items[i].rows
                slots[i] = _Answer(
                    prediction.predictions[start:end],
                    None if probabilities is None else probabilities[start:end],
                    warned,
                    finite,
                )
                start = end
            self.pending.batch_rows.setdefault(version, []).append(start)
        for slot in slots:
            assert slot is not None
            results.append(slot)
        return results

    # ------------------------------------------------------------------ versions
    async def _apply(self, table: RoutingTable, required: bool = False) -> None:
        """Load what the table needs, then switch routing, then drop what it no longer needs.

        A challenger the table stopped or replaced gets no request from the moment the table
        arrives, not only once the table's new versions have loaded (seconds): a rollback
        takes effect at the replica's next sync."""
        async with self._load_lock:
            if self.routing.challenger is not None and self.routing.challenger != table.challenger:
                self.routing = replace(
                    self.routing, challenger=None, percent=0.0, shadow_percent=0.0
                )
            for version in table.versions():
                if version in self.loaded or (version in self.load_errors and not required):
                    continue
                try:
                    self.loaded[version] = await asyncio.to_thread(self._load, version)
                    self.load_errors.pop(version, None)
                except Exception as exc:
                    if required and version == table.champion:
                        raise
                    self.load_errors[version] = f"{type(exc).__name__}: {exc}"[:500]
                    logger.error("raymlops: loading v%s failed: %s", version, exc)
            champion = table.champion if table.champion in self.loaded else self.routing.champion
            challenger = table.challenger if table.challenger in self.loaded else None
            self.routing = RoutingTable(
                champion=champion,
                challenger=challenger,
                percent=table.percent if challenger is not None else 0.0,
                shadow_percent=table.shadow_percent if challenger is not None else 0.0,
                previous_champion=table.previous_champion,
                epoch=table.epoch,
            )
            keep = {champion, challenger}
            for version in [v for v in self.loaded if v not in keep]:
                del self.loaded[version]

    def _load(self, version: int) -> _Loaded:
        """Fetch, verify and load a version (in a worker thread), then warm it up."""
        from filelock import FileLock

        home = Path(self.args["home"])
        (home / "locks").mkdir(parents=True, exist_ok=True)
        with FileLock(str(home / "locks" / f"serve-load-{self.model}-{version}.lock"), timeout=300):
            predictor = self.registry.load_predictor(self.model, version)
            info = self.registry.version_info(self.model, version).to_dict()
        if self.cfg.gpus_per_replica > 0:
            import torch

            if torch.cuda.is_available():
                predictor.model = predictor.model.to("cuda")
                predictor.device = "cuda"
        schema = RequestSchema.from_preprocessor(predictor.preprocessor, self.cfg.allow_missing)
        classes = predictor.preprocessor.classes
        loaded = _Loaded(version, predictor, schema, list(classes) if classes else None, info)
        warm = {name: np.array([0.0]) for name in schema.numeric}
        warm.update({name: np.array([None], dtype=object) for name in schema.categorical})
        try:  # first-call costs paid here, not by a request; failures show on real requests
            predictor.predict(warm)
        except Exception as exc:
            logger.warning("raymlops: warming up v%s failed: %r", version, exc)
        if self.log is not None:
            self.log.register_version(version, schema.numeric, schema.categorical, loaded.classes)
        return loaded

    # ------------------------------------------------------------------ background
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sync_forever(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            delta = self.stats.drain()
            try:
                self._flush_metrics()
                table = RoutingTable.from_dict(
                    await self.coordinator.sync.remote(
                        self.replica_id, delta.to_wire(), sorted(self.loaded), self.load_errors
                    )
                )
                failures = 0
            except Exception as exc:
                delta.merge(self.stats.drain())
                self.stats = delta
                failures += 1
                if failures in (1, 20) or failures % 200 == 0:
                    logger.warning("raymlops: coordinator unreachable (%s)", exc)
                continue
            if table.epoch != self.routing.epoch:
                await self._apply(table)

    def _metrics(self) -> None:
        from ray.util import metrics

        keys = ("model", "version", "role")
        self.m_requests = metrics.Counter(
            "raymlops_serve_requests", "Answered /predict requests.", tag_keys=keys
        )
        self.m_errors = metrics.Counter(
            "raymlops_serve_errors", "Requests whose prediction failed.", tag_keys=keys
        )
        self.m_latency = metrics.Histogram(
            "raymlops_serve_latency_ms",
            "Server-side /predict latency (ms).",
            boundaries=list(LATENCY_BUCKETS_MS),
            tag_keys=keys,
        )
        self.m_batch = metrics.Histogram(
            "raymlops_serve_batch_rows",
            "Rows per Predictor call.",
            boundaries=_BATCH_ROWS_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.m_dropped = metrics.Counter(
            "raymlops_prediction_log_dropped_rows",
            "Prediction-log rows dropped (buffer full or write failed).",
            tag_keys=("model",),
        )
        self.m_lost = metrics.Counter(
            "raymlops_prediction_log_lost_rows",
            "Prediction-log rows a killed replica held unwritten, counted from its ledger "
            "by a replica on the same node (raymlops.serve.log_ledger).",
            tag_keys=("model",),
        )
        self.m_unseen = metrics.Counter(
            "raymlops_unseen_categories",
            "Categorical values outside the training vocabulary in answered rows (mapped to "
            "the unknown bucket; each such row carries a warning in the response).",
            tag_keys=("model", "version", "column"),
        )

    def _flush_metrics(self) -> None:
        pending, self.pending = self.pending, _PendingMetrics()
        unseen, self.pending_unseen = self.pending_unseen, {}
        for (version, column), count in unseen.items():
            tags = {"model": self.model, "version": str(version), "column": column}
            self.m_unseen.inc(count, tags=tags)
        for (version, role), values in pending.latencies.items():
            tags = {"model": self.model, "version": str(version), "role": role}
            self.m_requests.inc(len(values), tags=tags)
            for value in values:
                self.m_latency.observe(value, tags=tags)
        for (version, role), count in pending.errors.items():
            tags = {"model": self.model, "version": str(version), "role": role}
            self.m_errors.inc(count, tags=tags)
        for version, sizes in pending.batch_rows.items():
            tags = {"model": self.model, "version": str(version)}
            for size in sizes:
                self.m_batch.observe(size, tags=tags)
        log = self.log
        if log is not None:  # the writer's running totals; what grew since the last report
            dropped, lost = log.dropped_rows, log.counted_lost_rows
            if dropped > self._reported_dropped:
                self.m_dropped.inc(dropped - self._reported_dropped, tags={"model": self.model})
            if lost > self._reported_lost:
                self.m_lost.inc(lost - self._reported_lost, tags={"model": self.model})
                logger.warning(
                    "raymlops: a killed replica of %s left %d prediction-log rows unwritten "
                    "(counted from its ledger)", self.model, lost - self._reported_lost,
                )  # fmt: skip
            self._reported_dropped, self._reported_lost = dropped, lost

    # ------------------------------------------------------------------ other endpoints
    def _model_document(self) -> dict[str, Any]:
        routing = self.routing
        loaded = self.loaded[routing.champion]
        info = loaded.info
        return {
            "name": self.model,
            "version": loaded.version,
            "task": loaded.predictor.task,
            "classes": loaded.classes,
            "features": loaded.schema.describe(),
            "metrics": info.get("metrics", {}),
            "lineage": {
                key: info.get(key)
                for key in (
                    "run_id",
                    "created",
                    "aliases",
                    "dataset_digest",
                    "config_hash",
                    "trial_id",
                )
            }
            | {
                "dataset_source": info.get("tags", {}).get("raymlops.dataset_source"),
                "code_version": info.get("tags", {}).get("raymlops.code_version"),
            },
            "challenger": None
            if routing.challenger is None
            else {
                "version": routing.challenger,
                "percent": routing.percent,
                "shadow_percent": routing.shadow_percent,
            },
        }

    def _build_api(self) -> Any:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, PlainTextResponse

        champion = self.loaded[self.routing.champion]
        api = FastAPI(
            title=f"raymlops · {self.model}",
            version=str(champion.version),
            description=(
                "Predictions from the registered model's champion (and a canary challenger). "
                'POST /predict with {"instances": [{feature: value, ...}, ...]}.'
            ),
        )
        example_row = {
            f["name"]: 0.0 if f["kind"] == "numeric" else "…" for f in champion.schema.describe()
        }
        response_schema = {
            "type": "object",
            "properties": {
                "predictions": {"type": "array"},
                "probabilities": {"type": "array", "items": {"type": "array"}},
                "classes": {"type": "array", "items": {"type": "string"}},
                "model": {"type": "string"},
                "version": {"type": "integer"},
                "role": {"type": "string", "enum": [CHAMPION, CHALLENGER]},
                "request_id": {"type": "string"},
                "warnings": {
                    "type": "array",
                    "description": "Only when a row has one: per row null or e.g. "
                    '{"unseen_category": {"colour": "purple"}} (a value outside the training '
                    "vocabulary, predicted as the column's unknown category).",
                    "items": {"type": ["object", "null"]},
                },
            },
        }
        error = {"description": "error", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"error": {"type": "string"},
            "field": {"type": "string"}, "request_id": {"type": "string"}}}}}}  # fmt: skip

        @api.post(
            "/predict",
            summary="Predict rows",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": champion.schema.json_schema(),
                            "example": {"instances": [example_row]},
                        }
                    },
                }
            },
            responses={
                200: {"content": {"application/json": {"schema": response_schema}}},
                400: error,
                401: error,
                413: error,
                422: error,
                503: {"description": "overloaded: retry with backoff"},
            },
        )
        async def predict_doc() -> None:  # answered by the fast path in _asgi
            raise RuntimeError("unreachable")

        @api.get("/healthz", summary="The process is alive")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @api.get("/readyz", summary="The champion is loaded")
        async def readyz() -> dict[str, Any]:
            return {"status": "ready", "version": self.routing.champion}

        @api.get("/v1/model", summary="Name, version, feature schema, metrics, lineage")
        async def model() -> dict[str, Any]:
            return self._model_document()

        @api.get("/v1/model/card", summary="The model card (Markdown)", response_model=None)
        async def card() -> Any:
            from raymlops.registry.store import CARD_MARKDOWN

            version = self.routing.champion
            try:
                info = await asyncio.to_thread(self.registry.version_info, self.model, version)
                text = (
                    await asyncio.to_thread(self.registry.run_text, info.run_id, CARD_MARKDOWN)
                    if info.run_id
                    else None
                )
            except Exception as exc:
                return JSONResponse(
                    {"error": f"model card failed: {type(exc).__name__}: {exc}"}, status_code=500
                )
            if text is None:
                return JSONResponse(
                    {"error": f"{self.model} v{version} has no stored model card"},
                    status_code=404,
                )
            return PlainTextResponse(str(text), media_type="text/markdown")

        return api

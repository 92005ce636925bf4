"""Online serving: `raymlops serve` against a bare single-process FastAPI + uvicorn server and
against MLflow's own `mlflow models serve`.

All three serve the same registered model (the embedded default's MLP, depth 2 × width 64, 30
numeric features, trained for a few epochs in this process) and are driven by the same load
generator with the same payloads:

(a) `raymlops serve` as a user types it (a subprocess): its own local Ray head, Ray Serve's
    HAProxy ingress, 2 replicas each holding the Predictor, a batching queue, the prediction
    log, per-version metrics, canary routing and validation on every request.
(b) `python benchmarks/serve_throughput.py --bare-server PORT HOME`: one uvicorn process,
    FastAPI with a pydantic request model, an `async def` endpoint calling
    `Predictor.predict(instances)` (the faster of sync/async endpoints measured), 1 torch
    thread; no validation beyond pydantic's, no log, no metrics.
(c) `mlflow models serve -m models:/breast-cancer@champion --env-manager local --workers 2`:
    what an MLflow user gets from the same version (every registered version is an MLflow
    pyfunc model, #17): MLflow's scoring server (FastAPI + uvicorn, 2 worker processes, the
    signature enforced on each request), 1 torch thread per worker, posted the same rows as
    `dataframe_records` to /invocations.

Load: `wrk` (Debian's package; C, 1–2 threads) with a Lua script posting the same JSON body,
keep-alive connections, at concurrency 1, 8 and 32 with single-row requests, plus one run at
concurrency 8 with 256-row requests. Without wrk, an asyncio client (aiohttp) runs instead;
being Python, it then competes with the servers for the 2 cores and the figures are lower.
On a 2-core machine the load generator shares the CPUs with the servers equally.

All servers are started first and stay up; each run is then measured against one after the
other (the order reversed every other repetition), so that background load on a shared
machine falls on all alike. While another server is measured the idle Ray head costs about
5% of one core. Printed per run: requests/s, rows/s, p50 and p99 latency (client side),
errors, and the CPU time the server's processes used per request (from /proc: raymlops counts
every process of its Ray head, the bare server its one process, MLflow's server its session:
the uvicorn parent and workers); then the medians over the repetitions and the ratios
(a)/(b) and (a)/(c) of the medians. `--only` measures one server alone.

    python benchmarks/serve_throughput.py            # 3 repetitions, 8 s per run
    python benchmarks/serve_throughput.py --quick    # 1 repetition, 4 s per run, < 3 minutes

The last line is one JSON object with `rps_ratio_c32`, `p99_ratio_c32` and `p50_delta_ms_c1`
((a)/(b)) and `rps_ratio_vs_mlflow_c32` ((a)/(c)).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from raymlops.core.processes import session_processes

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / ".data"
BIN = Path(sys.executable).parent
MODEL = "breast-cancer"
RUNS = [("c1", 1, 1), ("c8", 8, 1), ("c32", 32, 1), ("c8x256", 8, 256)]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("RAYMLOPS_BODY"), "r"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %d, \\"seconds\\": %.6f, \\"p50_ms\\": %.3f, \\"p99_ms\\": %.3f, "
    .. "\\"errors\\": %d, \\"non2xx\\": %d}\\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- model and data


def register_model(home: Path) -> None:
    """Version 1 (champion) of the embedded default, trained briefly in this process."""
    from raymlops.registry.store import Registry

    registry = Registry(home=home)
    registered = False
    with contextlib.suppress(Exception):
        registered = registry.alias_target(MODEL, "champion") is not None
    if registered:
        registry.add_mlflow_flavor(MODEL, "champion")  # registered before #17: (c) needs it
        return
    from raymlops.core.config import load_config
    from raymlops.data.dataset import load_dataset
    from raymlops.model.features import Preprocessor
    from raymlops.train.loop import TrainingArrays, fit, load_best_predictor

    print("training the benchmark model (once) …", file=sys.stderr, flush=True)
    config = load_config(None, ["train.epochs=5", "train.early_stopping_patience=null"])
    data, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    ckpt = home / "ckpt"

    def keep(metrics: dict[str, float], folder: Path | None) -> None:
        if folder is not None:
            shutil.rmtree(ckpt, ignore_errors=True)
            shutil.copytree(folder, ckpt)

    best = fit(config, arrays, keep)
    predictor = load_best_predictor(ckpt, config, arrays.preprocessor)
    with registry.pipeline_run(config, "serve-benchmark") as run_id:
        registry.register(config, run_id, predictor, data, {"val_loss": best["val_loss"]})


def payloads(folder: Path) -> dict[str, dict[int, Path]]:
    """JSON bodies of 1 and 256 rows of the dataset: `instances` for raymlops and the bare
    server, `dataframe_records` (the same records) for MLflow's /invocations."""
    from raymlops.data.dataset import load_table

    frame = load_table("sklearn:breast_cancer").to_pandas().drop(columns=["target"])
    out: dict[str, dict[int, Path]] = {"instances": {}, "dataframe_records": {}}
    for key, by_rows in out.items():
        for rows in (1, 256):
            path = folder / f"body-{key}-{rows}.json"
            path.write_text(json.dumps({key: frame.head(rows).to_dict(orient="records")}))
            by_rows[rows] = path
    return out


def mlflow_server(port: int, home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """(c): `mlflow models serve` on the champion, in a session of its own (its workers
    are counted and stopped with it)."""
    command = [
        str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
    ]  # fmt: skip
    server_env = {
        **env,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",  # 1 torch thread per worker, as the other two servers
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # MLflow starts `uvicorn` by name
    }
    return subprocess.Popen(
        command, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def _session_pids(session: int) -> list[int]:
    """The processes of a session (a server and its workers), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == session:
                pids.append(int(stat.parent.name))
    return pids


# --------------------------------------------------------------------------- (b) bare server


def bare_server(port: int, home: str) -> None:
    """(b): FastAPI + uvicorn in one process, calling the same Predictor."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    from raymlops.registry.store import Registry

    torch.set_num_threads(1)
    predictor = Registry(home=home).load_predictor(MODEL, "champion")
    app = FastAPI()

    class PredictRequest(BaseModel):
        instances: list[dict[str, float | str | None]]

    async def predict(request: PredictRequest) -> dict[str, Any]:
        prediction = predictor.predict(request.instances)
        assert prediction.probabilities is not None
        return {
            "predictions": prediction.predictions.tolist(),
            "probabilities": prediction.probabilities.tolist(),
            "classes": prediction.classes,
            "model": MODEL,
            "version": 1,
        }

    # Real annotation objects: the model is local, so FastAPI cannot resolve the string.
    predict.__annotations__ = {"request": PredictRequest, "return": dict[str, Any]}
    app.post("/predict")(predict)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------- load generator


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _wrk(url: str, body: Path, concurrency: int, seconds: float, script: Path) -> dict[str, Any]:
    threads = 1 if concurrency == 1 else 2
    proc = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", str(script), url,
        ],
        capture_output=True, text=True, env={**os.environ, "RAYMLOPS_BODY": str(body)},
    )  # fmt: skip
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    data: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    data["rps"] = data["requests"] / data["seconds"]
    data["errors"] += data["non2xx"]
    return data


def _python_load(url: str, body: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    payload = body.read_bytes()
    latencies: list[float] = []
    errors = 0

    async def worker(session: aiohttp.ClientSession, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with session.post(
                    url, data=payload, headers={"content-type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

    async def main() -> float:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(*(worker(session, deadline) for _ in range(concurrency)))
            return time.perf_counter() - started

    elapsed = asyncio.run(main())
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "errors": errors,
    }


def measure(
    url: str,
    body: Path,
    rows: int,
    concurrency: int,
    seconds: float,
    pids: Any,
    script: Path | None,
) -> dict[str, Any]:
    """One run against one server's predict endpoint `url`; `pids()` lists the server's
    processes for CPU time."""
    before = _cpu_seconds(pids())
    if script is not None:
        result = _wrk(url, body, concurrency, seconds, script)
    else:
        result = _python_load(url, body, concurrency, seconds)
    used = _cpu_seconds(pids()) - before
    result["rows_per_s"] = result["rps"] * rows
    result["cpu_ms_per_request"] = 1000 * used / max(result["requests"], 1)
    return result


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median over repetitions."""
    return {
        key: statistics.median(float(r[key]) for r in results)
        for key in ("rps", "rows_per_s", "p50_ms", "p99_ms", "errors", "cpu_ms_per_request")
    }


def _wait_ready(url: str, timeout_s: float = 120) -> None:
    """Until `url` (a readiness endpoint) answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} never became ready")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s per run (< 3 minutes)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run")
    parser.add_argument("--repetitions", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--home", default=None, help="registry home (default benchmarks/.data)")
    parser.add_argument("--python-load", action="store_true", help="asyncio client, not wrk")
    parser.add_argument("--only", choices=["raymlops", "bare", "mlflow"], default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--bare-server", nargs=2, metavar=("PORT", "HOME"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.bare_server:
        bare_server(int(opts.bare_server[0]), opts.bare_server[1])
        return
    seconds = opts.seconds or (4.0 if opts.quick else 8.0)
    repetitions = opts.repetitions or (1 if opts.quick else 3)
    home = Path(opts.home) if opts.home else DATA / "serve-home"
    home.mkdir(parents=True, exist_ok=True)
    register_model(home)
    work = Path(tempfile.mkdtemp(prefix="rmo-serve-bench-"))
    bodies = payloads(work)
    script: Path | None = None
    if shutil.which("wrk") and not opts.python_load:
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
    print(
        f"load generator: {'wrk' if script else 'python asyncio (aiohttp)'}; {seconds:g} s/run, "
        f"{repetitions} repetition(s), the servers taking turns"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env["RAYMLOPS_HOME"] = str(home)

    # Per server: its predict endpoint, its processes, its request bodies.
    servers: dict[str, tuple[str, Any, dict[int, Path]]] = {}
    bare: subprocess.Popen[bytes] | None = None
    mlflow: subprocess.Popen[bytes] | None = None
    raymlops = str(BIN / "raymlops")
    sets: list[str] = []
    try:
        if opts.only in (None, "bare"):
            port = _free_port()
            print(f"(b) bare FastAPI + uvicorn on :{port}", flush=True)
            bare = subprocess.Popen(
                [sys.executable, __file__, "--bare-server", str(port), str(home)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            process = bare
            url = f"http://127.0.0.1:{port}"
            _wait_ready(f"{url}/readyz")
            servers["bare"] = (f"{url}/predict", lambda: [process.pid], bodies["instances"])
        if opts.only in (None, "mlflow"):
            port = _free_port()
            print(f"(c) mlflow models serve on :{port}", flush=True)
            mlflow = mlflow_server(port, home, env)
            session = mlflow.pid
            _wait_ready(f"http://127.0.0.1:{port}/ping", timeout_s=300)
            servers["mlflow"] = (
                f"http://127.0.0.1:{port}/invocations",
                lambda: _session_pids(session),
                bodies["dataframe_records"],
            )
        if opts.only in (None, "raymlops"):
            port = _free_port()
            sets = ["--set", f"serve.port={port}"]
            for item in opts.overrides:
                sets += ["--set", item]
            print(f"(a) raymlops serve on :{port}", flush=True)
            started = time.monotonic()
            deploy = subprocess.run(
                [raymlops, "serve", "--json", *sets], env=env, capture_output=True, text=True
            )
            if deploy.returncode != 0:
                raise SystemExit(f"raymlops serve failed:\n{deploy.stderr[-3000:]}")
            deployed = json.loads(deploy.stdout)
            print(f"  deployed in {time.monotonic() - started:.1f} s ({deployed['proxy']} proxy)")
            sid = json.loads((home / "serve" / "ray-head.json").read_text())["session_id"]
            servers["raymlops"] = (
                f"{deployed['url']}/predict",
                lambda: list(session_processes(sid)),
                bodies["instances"],
            )
        for url, pids, body in servers.values():  # warm-up: connections, first calls
            measure(url, body[1], 1, 8, 2, pids, script)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {side: {} for side in servers}
        for rep in range(repetitions):
            for name, concurrency, rows in RUNS:
                # Alternate which server goes first, so drifting background load is shared.
                order = list(servers) if rep % 2 == 0 else list(reversed(servers))
                for side in order:
                    url, pids, body = servers[side]
                    result = measure(url, body[rows], rows, concurrency, seconds, pids, script)
                    runs[side].setdefault(name, []).append(result)
                    print(
                        f"  rep {rep + 1} {side:<8} {name:<7} {result['rps']:>8.1f} req/s "
                        f"{result['rows_per_s']:>9.1f} rows/s  p50 {result['p50_ms']:>6.2f} ms  "
                        f"p99 {result['p99_ms']:>7.2f} ms  errors {result['errors']}  "
                        f"server CPU {result['cpu_ms_per_request']:.3f} ms/req",
                        flush=True,
                    )
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(30)
        if mlflow is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mlflow.pid, signal.SIGTERM)
            mlflow.wait(30)
        if "raymlops" in servers:
            subprocess.run([raymlops, "serve", "stop", *sets], env=env, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    results = {side: {name: _median_run(r) for name, r in by.items()} for side, by in runs.items()}
    print(f"medians over {repetitions} repetition(s):")
    for side, by in results.items():
        for name, result in by.items():
            print(
                f"  {side:<8} {name:<7} {result['rps']:>8.1f} req/s {result['rows_per_s']:>9.1f} "
                f"rows/s  p50 {result['p50_ms']:>6.2f} ms  p99 {result['p99_ms']:>7.2f} ms  "
                f"server CPU {result['cpu_ms_per_request']:.3f} ms/req"
            )

    figures: dict[str, Any] = {
        "load_generator": "wrk" if script else "python",
        "seconds": seconds,
        "repetitions": repetitions,
    }
    for side, by_run in results.items():
        for name, result in by_run.items():
            for key in ("rps", "rows_per_s", "p50_ms", "p99_ms", "errors", "cpu_ms_per_request"):
                figures[f"{side}_{name}_{key}"] = round(float(result[key]), 3)
    if "bare" in results and "raymlops" in results:
        a, b = results["raymlops"], results["bare"]
        print("ratios (a)/(b):")
        for name, _, _ in RUNS:
            rps = a[name]["rps"] / b[name]["rps"]
            p99 = a[name]["p99_ms"] / b[name]["p99_ms"]
            print(f"  {name:<7} requests/s {rps:6.2f}   p99 {p99:6.2f}")
            figures[f"rps_ratio_{name}"] = round(rps, 3)
            figures[f"p99_ratio_{name}"] = round(p99, 3)
        figures["p50_delta_ms_c1"] = round(a["c1"]["p50_ms"] - b["c1"]["p50_ms"], 3)
        print(
            f"goals: c32 rps ratio {figures['rps_ratio_c32']:.2f} (>= 2.0), "
            f"c32 p99 ratio {figures['p99_ratio_c32']:.2f} (<= 1.0), "
            f"c1 p50 delta {figures['p50_delta_ms_c1']:+.2f} ms (<= +3)"
        )
    if "mlflow" in results and "raymlops" in results:
        a, c = results["raymlops"], results["mlflow"]
        print("ratios (a)/(c), raymlops serve over mlflow models serve:")
        for name, _, _ in RUNS:
            rps = a[name]["rps"] / c[name]["rps"]
            p99 = a[name]["p99_ms"] / c[name]["p99_ms"]
            print(f"  {name:<7} requests/s {rps:6.2f}   p99 {p99:6.2f}")
            figures[f"rps_ratio_vs_mlflow_{name}"] = round(rps, 3)
        print(f"goal: c32 rps ratio vs mlflow {figures['rps_ratio_vs_mlflow_c32']:.2f} (>= 3)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

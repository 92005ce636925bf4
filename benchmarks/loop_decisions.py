"""The closed loop's decisions, counted: 20 seeded scenarios, each a full monitor → retrain →
gate → canary → promote/refuse cycle against one live endpoint, scored against ground truth
the loop never sees.

Setup (once per run): a local Ray of 2 CPUs, an MLflow SQLite registry in a temporary home,
a reference table from `synth_dataset` (600 rows; numeric f0–f3 and categorical c0 with the
seeded relation of seed 0, plus `n0`, pure noise the label ignores), its champion v1 (a
one-trial Tune search, gated on thresholds), and v1 served by `serve_model` (Ray Serve, 2
replicas, HAProxy ingress). Every scenario starts from v1 as champion, alone on traffic.

One cycle: 600 rows of the scenario's new distribution are sent to the endpoint (one row per
request, each with a request id); the monitor compares the prediction log since the cycle
started with v1's training profile (importance-weighted verdict, `monitor.verdict: weighted`)
and joins the rows' delayed labels by request id (accuracy per window); `retrain` decides on
its triggers (drift, or decay: accuracy 0.05 below v1's test accuracy), trains a candidate
(1 trial, 8 epochs) on the reference plus the scenario's recent labelled rows less the fresh
slice it holds out (30%), gates it against the champion on that fresh slice (paired
bootstrap of log loss, 95% confidence, the candidate must be better: `min_improvement: 0`,
and by default not worse in ROC AUC by more than 0.05, the guard: `gate.champion.guard`;
fewer than 30 rows to compare on is inconclusive, a refusal: `gate.champion.min_rows`;
`--metric accuracy` compares accuracy with McNemar's test instead), gives it a 50% canary of
live traffic (single-row requests of the same distribution) until 60 of its requests or
serving's automatic rollback (errors +5 points, p95 +150 ms), then promotes it or not.

Scenarios (expected outcome in brackets; "refuse" covers rejected by the gate, rolled back
and inconclusive — anything that is not a promotion):

- covariate-*: every numeric mean shifted by 1.5–2.5 std (`synth_dataset(drift=…)`), same
  relation [promote];
- concept-*: the relation of another seed, same inputs [promote];
- ignored-*: only `n0` shifted by 3–4 std [no retrain];
- no-drift-*: rows of the reference distribution (no-drift-b: means moved by 0.02 std, other
  rows) [no retrain];
- noise-*: covariate shift, 40% or 35% of the recent labels flipped [refuse];
- sabotage-*: covariate shift, the search's learning rate 1e-7 and 1 epoch [refuse];
- few-rows-*: covariate shift of 1.0 or 1.5 std, only 40 or 20 of the sent rows come back
  labelled, and the candidate learns from them alone (`retrain.include_reference: false`)
  [refuse]. (Not 2.0 std: there v1 is so over-confident on the shifted rows that a model
  that learned almost nothing from 40 rows — ROC AUC 0.53 — still beat its log loss by
  0.017, which is no "worse candidate" as the scenario means to build);
- errors-*, slow-*: concept shift (a clear improvement offline), but the candidate's
  architecture fails on half the requests, or takes 0.5 s more, inside a Serve replica
  (`benchmarks/loop_arch.py`) [roll back].

Truth, from 20,000 fresh rows of each scenario's new distribution with clean labels, which
the loop never sees: the log loss of champion v1 and of the candidate (when one was trained).
`should promote` = the candidate's log loss is lower than the champion's by more than
MARGIN (0.01); a candidate that fails or is slow on live traffic never should. A cycle that
did not retrain has no candidate: it counts as a missed improvement only where the scenario
expects a promotion. Counted: `wrong_promotions` (promoted, truth says no),
`missed_improvements` (truth says promote, not promoted), `failed_requests` (requests of the
cycles' traffic that raised after the Client's retries), `median_cycle_s` (a cycle: from its
first request to the loop's decision; the reset to v1 before and the truth scoring after are
not counted).

    python benchmarks/loop_decisions.py                 # all 20 scenarios
    python benchmarks/loop_decisions.py --quick         # 6: one or more of each outcome
    python benchmarks/loop_decisions.py --scenarios concept-a,errors-a

The per-scenario table comes first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig
    from raymlops.loop.retrain import RetrainResult
    from raymlops.monitor.result import MonitorResult
    from raymlops.serve.api import Client

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/loop_decisions.py`: benchmarks.loop_arch
    sys.path.insert(0, str(REPO))

MODEL = "loop-decisions"
ARCH_MODULE = "benchmarks.loop_arch"
#: Truth: the candidate must beat the champion's log loss by more than this to deserve a
#: promotion.
MARGIN = 0.01
REFERENCE_ROWS = 600
RECENT_ROWS = 600
TRUTH_ROWS = 20_000
QUICK = ("covariate-a", "concept-a", "ignored-a", "sabotage-a", "few-rows-a", "errors-a")
#: Outcomes of `retrain` as the table names them.
DECISIONS = {
    "promoted": "promote",
    "skipped": "no retrain",
    "rejected": "refuse",
    "rolled-back": "roll back",
    "inconclusive": "inconclusive",
    "awaiting-approval": "awaiting approval",
}


@dataclass(frozen=True)
class Scenario:
    """One seeded scenario: how its new distribution is made, what may differ in the
    retraining config, and the outcome it expects (promote | no retrain | refuse |
    roll back)."""

    name: str
    kind: str
    expected: str
    seed: int = 0  # the relation (synth_dataset's seed)
    drift: float = 0.0  # every numeric mean shifted by this many std
    noise_shift: float = 0.0  # n0's mean shifted by this many std
    flip: float = 0.0  # share of the recent labels flipped
    labelled: int | None = None  # how many of the sent rows come back labelled (None: all)
    train: dict[str, Any] = field(default_factory=dict)  # train section overrides
    retrain: dict[str, Any] = field(default_factory=dict)  # retrain section overrides
    architecture: str | None = None  # the candidate's architecture


def _scenarios() -> dict[str, Scenario]:
    from benchmarks.loop_arch import ERRORS_IN_SERVING, SLOW_IN_SERVING

    sabotage = {"learning_rate": 1e-7, "epochs": 1}
    errors, slow = ERRORS_IN_SERVING, SLOW_IN_SERVING
    recent = {"include_reference": False}  # the candidate learns from the recent rows alone
    items = [
        Scenario("covariate-a", "covariate drift", "promote", drift=1.5),
        Scenario("covariate-b", "covariate drift", "promote", drift=2.0),
        Scenario("covariate-c", "covariate drift", "promote", drift=2.5),
        Scenario("concept-a", "concept drift", "promote", seed=101),
        Scenario("concept-b", "concept drift", "promote", seed=102),
        Scenario("ignored-a", "drift in an ignored feature", "no retrain", noise_shift=1.0),
        Scenario("ignored-b", "drift in an ignored feature", "no retrain", noise_shift=1.5),
        Scenario("no-drift-a", "no drift", "no retrain"),
        Scenario("no-drift-b", "no drift", "no retrain", drift=0.02),  # other rows, same law
        Scenario("noise-a", "label noise", "refuse", drift=2.0, flip=0.4),
        Scenario("noise-b", "label noise", "refuse", drift=1.5, flip=0.35),
        Scenario("sabotage-a", "sabotaged search", "refuse", drift=2.0, train=sabotage),
        Scenario("sabotage-b", "sabotaged search", "refuse", drift=1.5, train=sabotage),
        Scenario("sabotage-c", "sabotaged search", "refuse", drift=2.5, train=sabotage),
        Scenario("few-rows-a", "too few rows", "refuse", drift=1.0, labelled=40, retrain=recent),
        Scenario("few-rows-b", "too few rows", "refuse", drift=1.5, labelled=20, retrain=recent),
        Scenario("errors-a", "errors under canary", "roll back", seed=104, architecture=errors),
        Scenario("errors-b", "errors under canary", "roll back", seed=105, architecture=errors),
        Scenario("slow-a", "slow under canary", "roll back", seed=106, architecture=slow),
        Scenario("slow-b", "slow under canary", "roll back", seed=107, architecture=slow),
    ]  # fmt: skip
    return {s.name: s for s in items}


SCENARIOS = _scenarios()


# --------------------------------------------------------------------------- data


def _synth(work: Path, rows: int, seed: int, drift: float) -> pd.DataFrame:
    """`rows` rows of synth_dataset's relation `seed` under covariate shift `drift`."""
    from raymlops.data.dataset import synth_dataset

    path = work / f"synth-{seed}-{drift:g}-{rows}.parquet"
    if not path.exists():
        synth_dataset(str(path), rows=rows, features=4, categorical=1, seed=seed, drift=drift)
    return pd.read_parquet(path)


def _with_noise_column(frame: pd.DataFrame, shift: float, seed: int) -> pd.DataFrame:
    """The frame with `n0`, a feature the label ignores: N(shift, 1), placed before the label."""
    rng = np.random.default_rng([seed, 7])
    out = frame.drop(columns=["label"])
    out["n0"] = rng.normal(shift, 1.0, size=len(frame)).astype(np.float32)
    out["label"] = frame["label"].to_numpy()
    return out


def reference_table(work: Path) -> Path:
    """The champion's training data: the first REFERENCE_ROWS rows of relation 0, with n0."""
    path = work / "reference.parquet"
    frame = _synth(work, REFERENCE_ROWS + RECENT_ROWS + TRUTH_ROWS, 0, 0.0)
    _with_noise_column(frame.iloc[:REFERENCE_ROWS], 0.0, 0).to_parquet(path, index=False)
    return path


@dataclass
class ScenarioData:
    """A scenario's rows: `recent` (sent to the endpoint; the labelled ones come back for
    retraining) and `truth` (clean labels, never shown to the loop)."""

    recent: pd.DataFrame
    labelled: pd.DataFrame
    truth: pd.DataFrame


def scenario_data(work: Path, scenario: Scenario) -> ScenarioData:
    """The scenario's new distribution, seeded: rows after the reference's (so that the
    no-drift rows are not the champion's training rows), then noise and label damage."""
    total = REFERENCE_ROWS + RECENT_ROWS + TRUTH_ROWS
    frame = _synth(work, total, scenario.seed, scenario.drift).iloc[REFERENCE_ROWS:]
    frame = _with_noise_column(
        frame.reset_index(drop=True), scenario.noise_shift, 1 + scenario.seed
    )
    recent = frame.iloc[:RECENT_ROWS].reset_index(drop=True)
    truth = frame.iloc[RECENT_ROWS:].reset_index(drop=True)
    labelled = recent.copy()
    rng = np.random.default_rng([scenario.seed, int(scenario.drift * 100), 11])
    if scenario.flip:
        flipped = rng.random(len(labelled)) < scenario.flip
        labelled.loc[flipped, "label"] = 1 - labelled.loc[flipped, "label"]
    if scenario.labelled is not None:
        keep = np.sort(rng.choice(len(labelled), size=scenario.labelled, replace=False))
        labelled = labelled.iloc[keep].reset_index(drop=True)
    return ScenarioData(recent, labelled, truth)


# --------------------------------------------------------------------------- config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def suite_config(reference: Path, port: int, metric: str = "auto") -> PipelineConfig:
    """The loop's config for the whole suite (see the module docstring); `metric` is the
    champion comparison's (gate.champion.metric; 'auto' = log loss here)."""
    from raymlops.core.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "name": MODEL,
            "data": {"path": str(reference), "label": "label", "id_columns": ["id"]},
            "model": {
                "params": {"depth": 1, "width": 16, "dropout": 0.0},
                "allowed_modules": [ARCH_MODULE],
            },
            "train": {
                "epochs": 8,
                "batch_size": 32,
                "learning_rate": 0.01,
                "early_stopping_patience": None,
            },
            "tune": {"num_samples": 1, "scheduler": "fifo"},
            "registry": {"model_name": MODEL, "experiment": MODEL},
            "gate": {"thresholds": {}, "champion": {"min_improvement": 0.0, "metric": metric}},
            "retrain": {
                "triggers": ["drift", "decay"],
                "canary_percent": 50.0,
                "canary_requests": 60,
                "canary_minutes": 1.5,
                "canary_poll_s": 0.5,
            },
            "promotion": "auto",
            "serve": {
                "port": port,
                "cpus_per_replica": 0.25,
                "autoscaling": {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2},
                "alias_poll_interval_s": 0.5,
                "canary": {
                    "min_requests": 30,
                    "error_rate_margin": 0.05,
                    "p95_latency_margin_ms": 150,
                },
                "prediction_log": {"flush_interval_s": 0.2},
            },
        }
    )


def scenario_config(config: PipelineConfig, scenario: Scenario) -> PipelineConfig:
    """The suite's config with the scenario's training overrides and candidate architecture."""
    if not scenario.train and not scenario.retrain and scenario.architecture is None:
        return config
    data = config.model_dump()
    data["train"] = {**data["train"], **scenario.train}
    data["retrain"] = {**data["retrain"], **scenario.retrain}
    if scenario.architecture is not None:
        data["model"] = {**data["model"], "architecture": scenario.architecture}
    return type(config).model_validate(data)


# --------------------------------------------------------------------------- traffic


class Traffic:
    """Requests to the endpoint from a few threads, counting those that fail (after the
    Client's own retries). `send` sends a frame once; `start`/`stop` keep single-row
    requests of a frame going in the background (the canary's live traffic)."""

    def __init__(self, client: Client, threads: int = 3) -> None:
        self.client = client
        self.threads = threads
        self.sent = 0
        self.failed = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _one(self, rows: pd.DataFrame, request_id: str | None = None) -> None:
        try:
            self.client.predict(rows, request_id=request_id)
            ok, error = True, ""
        except Exception as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.sent += 1
            if not ok:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(error)

    def send(self, frame: pd.DataFrame, request_ids: list[str]) -> None:
        """One request per row, each with its id (delayed labels join on it)."""
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(self._one, (frame.iloc[[i]] for i in range(len(frame))), request_ids))

    def start(self, frame: pd.DataFrame) -> None:
        self._stop.clear()

        def run(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not self._stop.is_set():
                self._one(frame.iloc[[int(rng.integers(len(frame)))]])

        self._workers = [
            threading.Thread(target=run, args=(i,), daemon=True) for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
        self._workers = []


# --------------------------------------------------------------------------- the suite


@dataclass
class CycleResult:
    """One scenario's cycle: the loop's decision, the truth, and what it cost."""

    scenario: Scenario
    decision: str
    reason: str
    candidate: int | None
    champion_loss: float
    candidate_loss: float | None
    should_promote: bool
    seconds: float
    requests: int
    failed_requests: int
    steps: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.decision == "promote"

    @property
    def wrong_promotion(self) -> bool:
        return self.promoted and not self.should_promote

    @property
    def missed_improvement(self) -> bool:
        return self.should_promote and not self.promoted

    @property
    def as_expected(self) -> bool:
        if self.scenario.expected == "refuse":
            return self.decision in ("refuse", "roll back", "inconclusive")
        return self.decision == self.scenario.expected

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "kind": self.scenario.kind,
            "expected": self.scenario.expected,
            "decision": self.decision,
            "truth_champion_log_loss": round(self.champion_loss, 4),
            "truth_candidate_log_loss": None
            if self.candidate_loss is None
            else round(self.candidate_loss, 4),
            "should_promote": self.should_promote,
            "cycle_s": round(self.seconds, 1),
            "failed_requests": self.failed_requests,
            "reason": self.reason,
        }


class Suite:
    """The suite's registry, champion v1 and live endpoint; `run` plays one scenario."""

    def __init__(self, work: Path, config: PipelineConfig, url: str) -> None:
        from raymlops.registry.store import Registry
        from raymlops.serve.api import Client

        self.work = work
        self.config = config
        self.home = work / "home"
        self.registry = Registry.from_config(config, self.home)
        self.client = Client(url, backoff_s=0.02)
        self._losses: dict[tuple[str, int], float] = {}

    def _reset_champion(self) -> None:
        """v1 champion alone on traffic, as every scenario starts."""
        from raymlops.registry.store import CHAMPION
        from raymlops.serve.api import serve_rollback, serve_status

        if serve_status(self.config, home=self.home).challenger is not None:
            serve_rollback(self.config, reason="benchmark: next scenario", home=self.home)
        if self.registry.alias_target(MODEL, CHAMPION) != 1:
            self.registry.set_alias(
                MODEL, CHAMPION, 1, action="rollback", reason="benchmark: next scenario"
            )
        probe = self.config_rows().iloc[:1]
        deadline = time.monotonic() + 60
        while True:
            status = serve_status(self.config, home=self.home)
            answers = {self.client.predict(probe).version for _ in range(8)}
            if (status.champion, status.challenger) == (1, None) and answers == {1}:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"v1 not alone on traffic after 60 s: {status}, {answers}")
            time.sleep(0.5)

    def config_rows(self) -> pd.DataFrame:
        return pd.read_parquet(self.config.data.path).drop(columns=["id", "label"])

    def _log_loss(self, version: int, scenario: Scenario, truth: pd.DataFrame) -> float:
        """A version's log loss on the scenario's truth rows (cached per scenario)."""
        from raymlops.loop.scoring import score, task_metrics

        key = (scenario.name, version)
        if key not in self._losses:
            predictor = self.registry.load_predictor(MODEL, version)
            scored = score(predictor, truth, "label")
            self._losses[key] = task_metrics(predictor, scored.y, scored.outputs)["log_loss"]
        return self._losses[key]

    def run(self, scenario: Scenario, echo: bool = False) -> CycleResult:
        """One full cycle of `scenario` from champion v1 (see the module docstring)."""
        from raymlops.loop.retrain import ServingCanary, retrain
        from raymlops.monitor.run import run_monitor

        self._reset_champion()
        data = scenario_data(self.work, scenario)
        labelled = self.work / f"recent-{scenario.name}.parquet"
        data.labelled.to_parquet(labelled, index=False)
        # The labels that come back later, joined to the prediction log by request id.
        tag = f"{scenario.name}-{os.urandom(3).hex()}"
        labels = self.work / f"labels-{tag}.parquet"
        pd.DataFrame(
            {
                "request_id": [f"{tag}-{i}" for i in data.labelled["id"]],
                "label": data.labelled["label"].to_numpy(),
            }
        ).to_parquet(labels, index=False)
        config = scenario_config(self.config, scenario)
        requests = data.recent.drop(columns=["id", "label"])
        traffic = Traffic(self.client)
        started = time.monotonic()
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        traffic.send(requests, [f"{tag}-{i}" for i in data.recent["id"]])
        # What the replicas buffer reaches the prediction log within a flush interval.
        time.sleep(config.serve.prediction_log.flush_interval_s + 1.5)
        monitored = run_monitor(
            config,
            since=since,
            labels=str(labels),
            home=self.home,
            write_files=False,
            log_to_mlflow=False,
            echo=echo,
        )
        canary = ServingCanary(
            config,
            home=self.home,
            by="loop-decisions",
            on_start=lambda: traffic.start(requests),
            on_end=traffic.stop,
        )
        try:
            result = retrain(
                config,
                monitored=monitored,
                canary=canary,
                recent_data=str(labelled),
                home=self.home,
                echo=echo,
            )
        finally:
            traffic.stop()
        seconds = time.monotonic() - started
        decision = DECISIONS[result.outcome]
        champion_loss = self._log_loss(1, scenario, data.truth)
        candidate_loss = (
            None
            if result.candidate is None
            else self._log_loss(result.candidate, scenario, data.truth)
        )
        faulty = scenario.architecture is not None
        should = (
            candidate_loss is not None and not faulty and champion_loss - candidate_loss > MARGIN
        ) or (candidate_loss is None and scenario.expected == "promote")
        return CycleResult(
            scenario,
            decision,
            _reason(result, monitored),
            result.candidate,
            champion_loss,
            candidate_loss,
            should,
            seconds,
            traffic.sent,
            traffic.failed,
            list(result.steps),
        )


def _reason(result: RetrainResult, monitored: MonitorResult) -> str:
    """Why the loop decided as it did, in one short line."""
    if result.outcome == "skipped":
        return f"monitor: {monitored.verdict} ({monitored.dataset.explain()})"
    if result.canary is not None and result.outcome != "promoted":
        return f"canary: {result.canary.reason}"
    gate = result.gate
    if gate is None:
        return result.outcome
    comparison = gate.comparison or {}
    paired = comparison.get("paired") or {}
    if paired:
        text = (
            f"gate {gate.status}: {paired['metric']} gain on {paired['rows']} fresh rows "
            f"{paired['difference']:+.3f}, {paired['confidence']:.0%} interval "
            f"[{paired['low']:+.3f}, {paired['high']:+.3f}]"
        )
        guard = comparison.get("guard") or {}
        if guard:
            text += (
                f"; {guard['metric']} guard {guard['difference']:+.3f} "
                f"[{guard['low']:+.3f}, {guard['high']:+.3f}] "
                f"({'passed' if guard['passed'] else 'failed'}, needs ≥ {guard['required']:+.3f})"
            )
        return text
    return f"gate {gate.status}: {comparison.get('note') or comparison.get('basis', '')}"


@contextmanager
def open_suite(work: Path, echo: bool = False, metric: str = "auto") -> Iterator[Suite]:
    """Reference data, champion v1 (trained, gated) and its endpoint, in `work`; the Ray
    session already running is used (else a local one of 2 CPUs is started). The endpoint
    is taken down afterwards."""
    from raymlops.core.ray_session import ray_session
    from raymlops.loop.gate import run_gate
    from raymlops.loop.training import train_and_register
    from raymlops.registry.store import CHAMPION, Registry
    from raymlops.serve.api import serve_model, serve_stop

    work.mkdir(parents=True, exist_ok=True)
    config = suite_config(reference_table(work), _free_port(), metric)
    home = work / "home"
    with ray_session(None, num_cpus=2):
        train_and_register(config, home=home, echo=echo)
        registry = Registry.from_config(config, home)
        if not run_gate(registry, config, MODEL, 1).passed:
            raise RuntimeError("the champion v1 failed its gate")
        assert registry.alias_target(MODEL, CHAMPION) == 1
        status = serve_model(config, home=home, echo=echo)
        try:
            yield Suite(work, config, status.url)
        finally:
            serve_stop(config, home=home)


# --------------------------------------------------------------------------- report


def summary(results: list[CycleResult]) -> dict[str, Any]:
    """The counts of the JSON line."""
    return {
        "scenarios": len(results),
        "wrong_promotions": sum(r.wrong_promotion for r in results),
        "missed_improvements": sum(r.missed_improvement for r in results),
        "failed_requests": sum(r.failed_requests for r in results),
        "requests": sum(r.requests for r in results),
        "median_cycle_s": round(statistics.median(r.seconds for r in results), 1)
        if results
        else None,
        "max_cycle_s": round(max(r.seconds for r in results), 1) if results else None,
        "as_expected": sum(r.as_expected for r in results),
        "decisions": {
            d: sum(r.decision == d for r in results) for d in sorted({r.decision for r in results})
        },
        "must_refuse_scenarios": sum(r.scenario.expected != "promote" for r in results),
        "wrong": [r.scenario.name for r in results if r.wrong_promotion],
        "missed": [r.scenario.name for r in results if r.missed_improvement],
    }


def table(results: list[CycleResult]) -> str:
    """The per-scenario table (Markdown)."""
    head = (
        "| scenario | kind | expected | decision | truth log loss cand. vs champ. | should "
        "promote | cycle | failed req. | reason |"
    )
    lines = [head, "| " + " | ".join(["---"] * 9) + " |"]
    for r in results:
        cand = "—" if r.candidate_loss is None else f"{r.candidate_loss:.4f}"
        lines.append(
            f"| {r.scenario.name} | {r.scenario.kind} | {r.scenario.expected} | {r.decision}"
            f"{'' if r.as_expected else ' (!)'} | {cand} vs {r.champion_loss:.4f} | "
            f"{'yes' if r.should_promote else 'no'} | {r.seconds:.0f} s | {r.failed_requests} | "
            f"{r.reason} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"6 scenarios: {', '.join(QUICK)}")
    parser.add_argument("--scenarios", help="comma-separated scenario names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--verbose", action="store_true", help="show each step of the loop")
    parser.add_argument(
        "--metric",
        default="auto",
        help="gate.champion.metric of the suite (default auto: log loss; e.g. accuracy, "
        "compared with McNemar's test)",
    )
    args = parser.parse_args()
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:12} {s.kind:28} expects {s.expected}")
        return
    names = (
        args.scenarios.split(",") if args.scenarios else list(QUICK if args.quick else SCENARIOS)
    )
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)} (see --list)")
    # Ray's workers (Tune trials, Serve replicas) import benchmarks.loop_arch from here.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYMLOPS_HOME"):
        os.environ.pop(name, None)
    results: list[CycleResult] = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="loop-decisions-") as tmp,
        open_suite(Path(tmp), echo=args.verbose, metric=args.metric) as suite,
    ):
        setup_s = time.monotonic() - started
        print(f"setup (reference data, champion v1, endpoint): {setup_s:.0f} s", flush=True)
        for name in names:
            result = suite.run(SCENARIOS[name], echo=args.verbose)
            results.append(result)
            print(json.dumps(result.row()), flush=True)
    print()
    print(table(results))
    print()
    counts = summary(results)
    counts["setup_s"] = round(setup_s, 1)
    counts["total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

"""How a canary is decided and ended, without Ray: the quality comparison on delayed labels
(raymlops.serve.canary_quality), the retrain canary step's inconclusive, worse and failing
paths against a scripted endpoint and a real SQLite registry, and `watch` going on after a
failed pass."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raymlops.core.config import PipelineConfig, load_config
from raymlops.core.errors import ConfigError, DataError, UserInputError
from raymlops.loop import retrain as retrain_module
from raymlops.loop.gate_result import GateResult
from raymlops.loop.governance import PromotionError
from raymlops.loop.retrain import (
    RetrainResult,
    ServingCanary,
    _canary_step,
    _promote_candidate,
    _repeat_passes,
)
from raymlops.registry.store import CHAMPION, Registry
from raymlops.serve.api import ServeStatus
from raymlops.serve.canary import RoutingTable, follow_alias
from raymlops.serve.canary_quality import (
    QualityPolicy,
    compare_losses,
    judge_quality,
    log_columns,
    read_labels,
)
from raymlops.serve.coordinator import Coordinator
from raymlops.serve.prediction_log import LogChunk, PredictionLogWriter, read_log

POLICY = QualityPolicy(margin=0.0, confidence=0.95, min_rows=30, resamples=500)


# --------------------------------------------------------------------------- statistics


def test_a_clearly_worse_challenger_is_worse_with_its_bounds_stated() -> None:
    rng = np.random.default_rng(1)
    champion = rng.exponential(0.3, 400)  # per-row log loss
    challenger = rng.exponential(0.6, 400)
    verdict = compare_losses("log_loss", champion, challenger, POLICY)
    assert verdict.judged and verdict.worse
    assert verdict.low is not None and verdict.high is not None and verdict.difference
    assert 0.0 < verdict.low < verdict.difference < verdict.high
    assert "lower bound" in verdict.reason and "> margin 0" in verdict.reason


def test_an_equal_or_better_challenger_is_not_worse() -> None:
    rng = np.random.default_rng(2)
    same = compare_losses("log_loss", rng.exponential(0.4, 300), rng.exponential(0.4, 300), POLICY)
    better = compare_losses(
        "log_loss", rng.exponential(0.6, 300), rng.exponential(0.3, 300), POLICY
    )
    assert same.judged and not same.worse
    assert better.judged and not better.worse and better.high is not None and better.high < 0


def test_a_margin_tolerates_a_small_loss() -> None:
    champion = np.full(200, 0.30) + np.linspace(-0.01, 0.01, 200)
    challenger = champion + 0.02
    strict = compare_losses("log_loss", champion, challenger, POLICY)
    lenient = compare_losses("log_loss", champion, challenger, QualityPolicy(margin=0.05))
    assert strict.worse and not lenient.worse


def test_too_few_labelled_rows_decide_nothing() -> None:
    verdict = compare_losses("rmse", np.ones(29), np.full(500, 9.0), POLICY)
    assert not verdict.judged and not verdict.worse
    assert "29 labelled champion" in verdict.reason


def test_the_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.exponential(0.4, 100), rng.exponential(0.45, 100)
    assert compare_losses("log_loss", a, b, POLICY) == compare_losses("log_loss", a, b, POLICY)


def test_small_samples_keep_their_bootstrap_bounds() -> None:
    """The bounds the bootstrap gave small samples before its draws were memory-bounded."""
    rng = np.random.default_rng(7)
    a, b = rng.exponential(0.4, 300), rng.exponential(0.5, 250)
    verdict = compare_losses("log_loss", a, b, QualityPolicy(resamples=500))
    assert (verdict.low, verdict.high) == (0.04274491717137482, 0.1705889249659575)
    assert "(bootstrap of 500)" in verdict.reason
    a, b = rng.normal(0, 1, 200) ** 2, rng.normal(0, 1.2, 180) ** 2
    verdict = compare_losses("rmse", a, b, QualityPolicy(resamples=500))
    assert (verdict.low, verdict.high) == (0.01643914117815385, 0.27937984938102794)


@pytest.mark.parametrize("metric", ["log_loss", "rmse"])
def test_large_samples_use_a_normal_approximation_that_agrees_with_the_bootstrap(
    metric: str,
) -> None:
    rng = np.random.default_rng(4)
    a, b = rng.exponential(0.40, 6000), rng.exponential(0.42, 5500)
    approx = compare_losses(metric, a, b, QualityPolicy(resamples=400))
    boot = compare_losses(metric, a, b, QualityPolicy(resamples=400, bootstrap_rows=10_000))
    assert "normal approximation" in approx.reason and "bootstrap of 400" in boot.reason
    assert approx.difference == boot.difference
    assert approx.low is not None and boot.low is not None
    assert approx.high is not None and boot.high is not None
    assert approx.low == pytest.approx(boot.low, abs=0.004)
    assert approx.high == pytest.approx(boot.high, abs=0.004)
    assert approx.worse == boot.worse


def test_more_rows_than_the_cap_are_a_seeded_sample_and_say_so() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.exponential(0.4, 3000), rng.exponential(0.8, 2500)
    policy = QualityPolicy(max_rows=1000, resamples=200)
    verdict = compare_losses("log_loss", a, b, policy)
    assert verdict == compare_losses("log_loss", a, b, policy)
    assert (verdict.champion_rows, verdict.challenger_rows) == (3000, 2500)
    assert "on 1000 labelled challenger rows" in verdict.reason
    assert "sample of 1000 rows a side of 3000 champion and 2500 challenger" in verdict.reason
    assert verdict.worse


# --------------------------------------------------------------------------- the join


def _log(rows: list[tuple[str, int, str, str | None, str, float]]) -> pa.Table:
    """Prediction-log rows: (request_id, version, role, error, prediction, proba of '1')."""
    return pa.table(
        {
            "request_id": [r[0] for r in rows],
            "model_version": pa.array([r[1] for r in rows], pa.int64()),
            "role": [r[2] for r in rows],
            "error": pa.array([r[3] for r in rows], pa.string()),
            "prediction": [r[4] for r in rows],
            "proba_0": [1.0 - r[5] for r in rows],
            "proba_1": [r[5] for r in rows],
        }
    )


def test_judge_joins_labels_by_request_and_compares_each_versions_answers(
    tmp_path: Path,
) -> None:
    rows = []
    for i in range(60):  # v1 answers confidently right, v2 (answered or shadowed) wrong
        rows.append((f"c{i}", 1, "champion", None, "1", 0.9))
        rows.append((f"x{i}", 2, "challenger" if i % 2 else "shadow", None, "0", 0.2))
    rows.append(("e0", 2, "challenger", "boom", "0", 0.0))  # a failed request: not judged
    rows.append(("u0", 2, "challenger", None, "0", 0.2))  # never labelled
    labels_file = tmp_path / "labels.csv"
    ids = [f"c{i}" for i in range(60)] + [f"x{i}" for i in range(60)] + ["e0", "x0"]
    truth = ["1"] * 120 + ["1", "0"]  # x0 labelled twice: the last label wins
    pd.DataFrame({"request_id": ids, "y": truth}).to_csv(labels_file, index=False)

    labels = read_labels(str(labels_file), "y")
    assert labels.num_rows == 121
    verdict = judge_quality(_log(rows), labels, 1, 2, POLICY)
    assert (verdict.metric, verdict.champion_rows, verdict.challenger_rows) == ("log_loss", 60, 60)
    assert verdict.champion == pytest.approx(-np.log(0.9))
    expected = (59 * -np.log(0.2) + -np.log(0.8)) / 60  # x0's corrected label is '0'
    assert verdict.challenger == pytest.approx(expected)
    assert verdict.worse


def test_regression_is_compared_as_rmse() -> None:
    log = pa.table(
        {
            "request_id": [f"r{i}" for i in range(80)],
            "model_version": pa.array([1, 2] * 40, pa.int64()),
            "role": ["champion", "challenger"] * 40,
            "prediction": [10.0, 13.0] * 40,
        }
    )
    labels = pa.table({"request_id": [f"r{i}" for i in range(80)], "__label__": [10.5] * 80})
    verdict = judge_quality(log, labels, 1, 2, POLICY)
    assert verdict.metric == "rmse" and verdict.champion == pytest.approx(0.5)
    assert verdict.challenger == pytest.approx(2.5) and verdict.worse


def test_a_labels_feed_with_null_request_ids_skips_them(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"request_id": [None, "a", "b", None, "a"], "y": [1, 0, 1, 0, 1]}).to_parquet(path)
    labels = read_labels(str(path), "y")
    assert sorted(zip(*labels.to_pydict().values(), strict=True)) == [("a", 1), ("b", 1)]


def test_the_judge_reads_only_the_columns_and_labels_it_needs(tmp_path: Path) -> None:
    """The coordinator's read: the log's feature columns are never read, and labels of
    requests the log does not hold are dropped as the feed is read."""
    writer = PredictionLogWriter(str(tmp_path / "predictions"), "m", flush_interval_s=60)
    for version in (1, 2):
        writer.register_version(version, ["a"], ["colour"], ["0", "1"])
    for i in range(40):
        for version, role, p1 in ((1, "champion", 0.9), (2, "challenger", 0.3)):
            writer.append(
                LogChunk(
                    request_id=f"v{version}-{i}", timestamp=0.0, version=version, role=role,
                    latency_ms=1.0, columns={"a": np.ones(1), "colour": np.array(["red"])},
                    predictions=np.array(["1" if p1 > 0.5 else "0"], dtype=object),
                    probabilities=np.array([[1 - p1, p1]]),
                )
            )  # fmt: skip
    writer.flush()
    log = read_log(str(tmp_path / "predictions" / "m"), columns=log_columns)
    assert set(log.column_names) == {
        "request_id", "timestamp", "model_version", "role", "error", "prediction",
        "proba_0", "proba_1",
    }  # fmt: skip
    feed = tmp_path / "labels.csv"
    ids = [f"v{v}-{i}" for v in (1, 2) for i in range(40)] + ["elsewhere"]
    pd.DataFrame({"request_id": ids, "label": ["1"] * len(ids)}).to_csv(feed, index=False)
    labels = read_labels(str(feed), "label", keep=pa.array(ids[:-1]))
    assert labels.num_rows == 80
    verdict = judge_quality(log, labels, 1, 2, POLICY)
    assert (verdict.champion_rows, verdict.challenger_rows) == (40, 40) and verdict.worse
    assert verdict.champion == pytest.approx(-np.log(0.9))


def test_a_labels_feed_without_request_ids_is_named(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"id": ["a"], "y": [1]}).to_parquet(path)
    with pytest.raises(Exception, match="no column 'request_id'"):
        read_labels(str(path), "y")


# --------------------------------------------------------------------------- the retrain canary


class _Endpoint:
    """A scripted canary target that records what was asked of it: `counts` per poll
    (None: serving did not answer), serving's rollback from poll `rolled_back_at` on, a
    judge that raises `judge_error`."""

    def __init__(
        self,
        counts: list[int | None],
        quality: dict[str, Any] | None = None,
        fail_at_poll: int | None = None,
        rolled_back_at: int | None = None,
        judge_error: Exception | None = None,
    ) -> None:
        self.counts, self.quality, self.fail_at_poll = counts, quality, fail_at_poll
        self.rolled_back_at, self.judge_error = rolled_back_at, judge_error
        self.polls = 0
        self.ended: list[bool] = []

    def start_canary(self, version: int, percent: float) -> None:
        pass

    def canary_requests(self) -> int | None:
        return self.counts[min(self.polls, len(self.counts) - 1)]

    def canary_rolled_back(self) -> str | None:
        self.polls += 1
        if self.fail_at_poll is not None and self.polls >= self.fail_at_poll:
            raise ConnectionError("serving went away")
        if self.rolled_back_at is not None and self.polls >= self.rolled_back_at:
            return "error rate 40% exceeds the champion's"
        return None

    def judge_canary(self) -> dict[str, Any] | None:
        if self.judge_error is not None:
            raise self.judge_error
        return self.quality

    def end_canary(self, promoted: bool) -> None:
        self.ended.append(promoted)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """One SQLite registry for the module (creating one costs seconds)."""
    return Registry(home=tmp_path_factory.mktemp("canary-registry"))


@pytest.fixture
def model(store: Registry, request: pytest.FixtureRequest) -> str:
    """Model `m-<test>` in the module's registry with versions 1-3, v1 champion."""
    name = "m-" + re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)
    client = store.client
    client.create_registered_model(name)
    run = client.create_run(store.experiment_id("runs"))
    for _ in range(3):
        client.create_model_version(name, "file:///nowhere", run_id=run.info.run_id)
    store.set_alias(name, CHAMPION, 1, action="register", reason="first")
    return name


def _config(tmp_path: Path, model: str, *overrides: str) -> PipelineConfig:
    data = tmp_path / "train.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]}).to_csv(data, index=False)
    base = [f"data.path={data}", "data.label=y", f"registry.model_name={model}"]
    base += ["retrain.canary_minutes=0.0005", "retrain.canary_poll_s=0.01"]
    return load_config(None, [*base, *overrides])


def test_an_inconclusive_canary_keeps_the_champion_and_is_recorded(
    tmp_path: Path, store: Registry, model: str
) -> None:
    config = _config(tmp_path, model, "serve.canary.min_requests=50")
    endpoint = _Endpoint([0, 4])
    said: list[str] = []
    outcome = _canary_step(store, config, endpoint, 2, 1, "tester", said.append)
    assert outcome.inconclusive and outcome.requests == 4 and endpoint.ended == [False]
    last = store.alias_history(model)[-1]
    assert (last.action, last.from_version, last.to_version) == ("retrain-inconclusive", 2, 1)
    assert last.details["inconclusive"] is True
    assert store.alias_target(model, CHAMPION) == 1
    assert any("v1 stays champion" in line for line in said)
    result = RetrainResult(model, ["forced"], True, "inconclusive", 1, 1, 2, canary=outcome)
    assert "canary was inconclusive" in result.summary()

    promote = _config(tmp_path, model, "serve.canary.on_inconclusive=promote")
    endpoint = _Endpoint([0, 4])
    outcome = _canary_step(store, promote, endpoint, 2, 1, "tester", said.append)
    assert outcome.inconclusive and endpoint.ended == []  # left for the promotion to end


def test_a_canary_worse_in_quality_is_rolled_back(
    tmp_path: Path, store: Registry, model: str
) -> None:
    config = _config(tmp_path, model, "serve.canary.min_requests=5", "retrain.canary_requests=5")
    quality = {"judged": True, "worse": True, "reason": "log_loss 0.9 vs 0.3"}
    endpoint = _Endpoint([0, 10], quality=quality)
    outcome = _canary_step(store, config, endpoint, 2, 1, "tester", lambda _m: None)
    assert not outcome.healthy and outcome.reason == "quality: log_loss 0.9 vs 0.3"
    assert outcome.quality == quality and endpoint.ended == [False]
    assert store.alias_history(model)[-1].action == "retrain-rolled-back"


def test_a_failure_while_watching_ends_the_canary(
    tmp_path: Path, store: Registry, model: str
) -> None:
    config = _config(tmp_path, model, "retrain.canary_minutes=1")
    endpoint = _Endpoint([0, 1], fail_at_poll=2)
    with pytest.raises(ConnectionError):
        _canary_step(store, config, endpoint, 2, 1, "tester", lambda _m: None)
    assert endpoint.ended == [False]
    assert not [e for e in store.alias_history(model) if e.action.startswith("retrain-")]


_UNJUDGED = {"judged": False, "worse": False, "reason": "quality not judged: 3 labelled rows"}


@pytest.mark.parametrize("on_inconclusive", ["keep_champion", "promote"])
def test_a_labels_feed_that_judged_nothing_is_inconclusive_and_never_promoted(
    tmp_path: Path, store: Registry, model: str, on_inconclusive: str
) -> None:
    config = _config(
        tmp_path, model, "serve.canary.min_requests=5", "retrain.canary_requests=5",
        f"serve.canary.on_inconclusive={on_inconclusive}",
    )  # fmt: skip
    endpoint = _Endpoint([0, 10], quality=_UNJUDGED)
    outcome = _canary_step(store, config, endpoint, 2, 1, "tester", lambda _m: None)
    assert outcome.healthy and outcome.inconclusive and not outcome.promotable(on_inconclusive)
    assert outcome.reason == "quality: quality not judged: 3 labelled rows"
    assert endpoint.ended == [False]
    assert store.alias_history(model)[-1].action == "retrain-inconclusive"


def test_a_failed_quality_check_ends_the_canary_with_servings_reason(
    tmp_path: Path, store: Registry, model: str
) -> None:
    """Serving rolled the canary back between the last poll and the judge call: the judge
    says no canary runs, and the canary ends with serving's reason, never promoted."""
    config = _config(tmp_path, model, "serve.canary.min_requests=5", "retrain.canary_requests=5")
    endpoint = _Endpoint(
        [0, 10], rolled_back_at=2, judge_error=UserInputError("no canary is running")
    )
    outcome = _canary_step(store, config, endpoint, 2, 1, "tester", lambda _m: None)
    assert not outcome.healthy and outcome.reason == "error rate 40% exceeds the champion's"
    assert endpoint.ended == [False]
    assert store.alias_history(model)[-1].action == "retrain-rolled-back"

    endpoint = _Endpoint([0, 10], judge_error=ConnectionError("serving went away"))
    outcome = _canary_step(store, config, endpoint, 2, 1, "tester", lambda _m: None)
    assert not outcome.healthy and "quality check failed: serving went away" in outcome.reason


def test_a_rollback_after_the_last_poll_is_seen_before_the_promotion(
    tmp_path: Path, store: Registry, model: str
) -> None:
    config = _config(tmp_path, model, "serve.canary.min_requests=5", "retrain.canary_requests=5")
    endpoint = _Endpoint([0, 10], rolled_back_at=2)  # healthy at poll 1, rolled back after
    outcome = _canary_step(store, config, endpoint, 2, 1, "tester", lambda _m: None)
    assert not outcome.healthy and outcome.reason == "error rate 40% exceeds the champion's"
    assert endpoint.ended == [False]
    assert store.alias_history(model)[-1].action == "retrain-rolled-back"


def test_polls_serving_does_not_answer_decide_nothing(
    tmp_path: Path, store: Registry, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count serving did not give (None) never ends the watch as healthy, nor confirms
    the canary before the promotion; serving silent past the grace ends it unhealthy."""
    config = _config(tmp_path, model, "serve.canary.min_requests=5", "retrain.canary_requests=5")
    endpoint = _Endpoint([0, None, None, 10])
    outcome = _canary_step(store, config, endpoint, 2, 1, "tester", lambda _m: None)
    assert outcome.healthy and outcome.requests == 10 and endpoint.polls == 4
    assert endpoint.ended == []  # left for the promotion to end

    monkeypatch.setattr(retrain_module, "UNREACHABLE_GRACE_S", 0.01)
    endpoint = _Endpoint([0, 3, None])
    outcome = _canary_step(store, config, endpoint, 2, 1, "tester", lambda _m: None)
    assert not outcome.healthy and outcome.requests == 3
    assert outcome.reason == "serving did not answer the canary's watcher"
    assert endpoint.ended == [False]


def test_a_refused_promotion_ends_the_canary(tmp_path: Path, store: Registry, model: str) -> None:
    config = _config(tmp_path, model)
    store.set_alias(model, CHAMPION, 3, action="promote", reason="someone else")
    gate = GateResult(model, 2, "passed", "classification", [], {})
    endpoint = _Endpoint([0])
    said: list[str] = []
    with pytest.raises(PromotionError, match=r"v2 was not promoted.*canary was ended"):
        _promote_candidate(store, config, 2, gate, ["forced"], endpoint, "t", said.append)
    assert endpoint.ended == [False] and store.alias_target(model, CHAMPION) == 3
    last = store.alias_history(model)[-1]
    assert (last.action, last.to_version) == ("retrain-promotion-failed", 2)


class _ScriptedServing(ServingCanary):
    """ServingCanary reading scripted `serve status` answers (an Exception: no answer)."""

    def __init__(self, config: PipelineConfig, answers: list[Any]) -> None:
        super().__init__(config)
        self.answers = answers

    def _status(self) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_serving_canary_counts_only_answers_for_its_running_canary(tmp_path: Path) -> None:
    def status(challenger: int | None, requests: int) -> ServeStatus:
        rows = [{"version": 2, "role": "challenger", "requests": requests}]
        return ServeStatus(
            "app", "m", "", "", "RUNNING", 1, challenger, details={"since_canary": rows}
        )

    canary = _ScriptedServing(
        _config(tmp_path, "m"),
        [status(2, 7), ConnectionError("no answer"), status(None, 9)],
    )
    canary.version = 2
    assert canary.canary_requests() == 7
    assert canary.canary_requests() is None  # serving did not answer: no old count
    assert canary.canary_requests() is None  # serving rolled it back: nothing to count


# --------------------------------------------------------------------------- watch


def test_watch_logs_a_failed_pass_backs_off_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[Any] = [RuntimeError("registry down"), RuntimeError("still down"), "ok"]
    waits: list[float] = []

    def one_pass() -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with caplog.at_level(logging.ERROR, logger="raymlops.loop.retrain"):
        results = _repeat_passes(
            one_pass, 600.0, retry_s=5.0, retry_max_s=8.0, iterations=3,
            sleep=waits.append, echo=False,
        )  # fmt: skip
    assert results == ["ok"]
    assert waits == [5.0, 8.0]  # 5, then 10 capped at 8
    failed = [r for r in caplog.records if "pass" in r.getMessage()]
    assert len(failed) == 2 and all(r.exc_info is not None for r in failed)
    assert "registry down" in str(failed[0].exc_info[1])  # type: ignore[index]


def test_watch_stops_on_an_error_only_the_user_can_fix() -> None:
    calls: list[int] = []

    def one_pass() -> Any:
        calls.append(1)
        raise ConfigError("retrain has no data: set retrain.recent_data")

    with pytest.raises(ConfigError, match="retrain has no data"):
        _repeat_passes(
            one_pass, 60.0, retry_s=1.0, retry_max_s=1.0, iterations=3, sleep=lambda _s: None
        )
    assert len(calls) == 1


def test_watch_retries_a_data_error_and_stops_when_it_persists() -> None:
    outcomes: list[Any] = [DataError("cannot read part-1"), "ok"]
    outcomes += [DataError("no prediction log")] * 3 + ["never reached"]

    def one_pass() -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    waits: list[float] = []
    with pytest.raises(DataError, match="no prediction log"):
        _repeat_passes(
            one_pass, 0.0, retry_s=1.0, retry_max_s=4.0, iterations=6, sleep=waits.append,
            echo=False,
        )  # fmt: skip
    assert outcomes == ["never reached"] and waits == [1.0, 0.0, 1.0, 2.0]


# --------------------------------------------------------------------------- the champion alias


def test_serving_follows_the_alias_but_not_a_cleared_one() -> None:
    table = RoutingTable(champion=1, challenger=3, percent=10.0, epoch=4)
    moved = follow_alias(table, 2)
    assert moved == RoutingTable(
        champion=2, challenger=3, percent=10.0, previous_champion=1, epoch=5
    )
    promoted = follow_alias(table, 3)
    assert promoted is not None and (promoted.champion, promoted.challenger) == (3, None)
    assert follow_alias(table, 1) is None
    assert follow_alias(table, None) is None  # cleared: v1 keeps answering


def test_a_cleared_champion_alias_keeps_serving_and_warns_in_status(
    tmp_path: Path, store: Registry, model: str
) -> None:
    """The coordinator's alias step on a real registry: the first version failed its gate
    (alias cleared) — it still answers, and status says so with the registry's reason until
    a version is champion again."""
    coordinator = Coordinator.__new__(Coordinator)
    coordinator.registry, coordinator.model = store, model
    coordinator.args = {"deploy_id": "d", "app_name": model}
    coordinator.state_path = tmp_path / "state.json"
    coordinator.table, coordinator.events = RoutingTable(champion=1), []
    coordinator.canary_labels, coordinator.alias_warning = None, None
    store.set_alias(
        model, CHAMPION, None, action="clear", reason="v1 failed the gate", expected_from=1
    )
    asyncio.run(coordinator._apply_alias(store.alias_target(model, CHAMPION)))
    assert coordinator.table == RoutingTable(champion=1)
    assert coordinator.alias_warning == (
        "champion alias cleared: still serving v1, which the registry no longer names "
        "champion (v1 failed the gate)"
    )
    status = ServeStatus(model, model, "", "", "RUNNING", 1, details={"warnings": ["w"]})
    assert "  warning: w" in status.summary().splitlines()

    store.set_alias(model, CHAMPION, 2, action="promote", reason="v2 passed")
    asyncio.run(coordinator._apply_alias(store.alias_target(model, CHAMPION)))
    assert coordinator.alias_warning is None and coordinator.table.champion == 2

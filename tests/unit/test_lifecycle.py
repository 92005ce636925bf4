"""The retrain policy's pure parts: which triggers fire, how the new training set is built,
how a canary is judged, and the `retrain` config section. (The whole loop on a real Ray,
Serve endpoint and MLflow store is tests/e2e/test_main_job.py.)"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from raymlops.core.config import PipelineConfig, load_config
from raymlops.core.errors import ConfigError, UserInputError
from raymlops.loop.retrain import _watch_canary, build_training_data, retrain_reasons
from raymlops.monitor.drift import DatasetDrift
from raymlops.registry.store import CHAMPION, Registry


def _config(tmp_path: Path, **retrain: Any) -> PipelineConfig:
    data = tmp_path / "train.csv"
    if not data.exists():
        pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": ["a", "b", "a", "b"]}).to_csv(
            data, index=False
        )
    overrides = [f"data.path={data}", "data.label=y"] + [
        f"retrain.{k}={v}" for k, v in retrain.items()
    ]
    return load_config(None, overrides)


def _monitored(
    version: int = 1,
    drifted: bool = False,
    features: list[str] | None = None,
    windows: list[dict[str, float]] | None = None,
) -> Any:
    performance = [SimpleNamespace(rows=50, metrics=m, window_start=None) for m in windows or []]
    return SimpleNamespace(
        version=version,
        drift_detected=drifted,
        verdict="drift" if drifted else "no drift",
        dataset=DatasetDrift(drifted, len(features or []) / 4, 0.5, 4, features or [], [], "share"),
        performance=performance[-1:],
        performance_windows=performance,
    )


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(home=tmp_path / "home")
    client = reg.client
    client.create_registered_model("breast-cancer")
    run = client.create_run(reg.experiment_id("runs"))
    client.create_model_version(
        "breast-cancer",
        (tmp_path / "m").as_uri(),
        run_id=run.info.run_id,
        tags={"raymlops.metric.test_accuracy": "0.95"},
    )
    reg.set_alias("breast-cancer", CHAMPION, 1, action="register")
    return reg


def test_no_trigger_fires_on_quiet_traffic(tmp_path: Path, registry: Registry) -> None:
    config = _config(tmp_path)
    assert retrain_reasons(config, registry, _monitored()) == []
    assert retrain_reasons(config, registry, None) == []


def test_drift_fires_and_names_the_features(tmp_path: Path, registry: Registry) -> None:
    config = _config(tmp_path)
    reasons = retrain_reasons(config, registry, _monitored(drifted=True, features=["a", "b"]))
    assert reasons == ["drift (share): 2 of 4 features drifted (a, b); share 50% (threshold 50%)"]
    quiet = _config(tmp_path, triggers='["schedule"]')
    assert retrain_reasons(quiet, registry, _monitored(drifted=True, features=["a"])) == []


def test_decay_compares_the_latest_window_with_the_test_metric(
    tmp_path: Path, registry: Registry
) -> None:
    config = _config(tmp_path, max_decay=0.05)
    fine = _monitored(windows=[{"accuracy": 0.70}, {"accuracy": 0.93}])
    assert retrain_reasons(config, registry, fine) == []
    decayed = _monitored(windows=[{"accuracy": 0.95}, {"accuracy": 0.85}])
    [reason] = retrain_reasons(config, registry, decayed)
    assert reason.startswith("decay: accuracy 0.8500 on 50 labelled rows vs 0.9500")


def test_schedule_fires_once_the_champion_is_old(tmp_path: Path, registry: Registry) -> None:
    config = _config(tmp_path, triggers='["schedule"]', schedule="1d")
    assert retrain_reasons(config, registry, None) == []
    later = time.time() + 2 * 86400
    [reason] = retrain_reasons(config, registry, None, now=later)
    assert reason == "schedule: champion v1 is older than 1d"


def test_training_set_is_reference_plus_recent_rows(tmp_path: Path) -> None:
    config = _config(tmp_path)
    recent = tmp_path / "recent.parquet"
    pd.DataFrame({"y": ["b"], "x": [9.0], "request_id": ["r1"]}).to_parquet(recent)
    path, rows = build_training_data(config, tmp_path / "home", str(recent))
    frame = pd.read_parquet(path)
    assert rows == 5 and list(frame.columns) == ["x", "y"]
    assert frame["x"].tolist() == [1.0, 2.0, 3.0, 4.0, 9.0]

    only_recent = _config(tmp_path, include_reference="false")
    _, rows = build_training_data(only_recent, tmp_path / "home", str(recent))
    assert rows == 1


def test_recent_rows_must_carry_the_training_columns(tmp_path: Path) -> None:
    config = _config(tmp_path)
    recent = tmp_path / "recent.parquet"
    pd.DataFrame({"x": [9.0]}).to_parquet(recent)
    with pytest.raises(UserInputError, match="lacks column"):
        build_training_data(config, tmp_path / "home", str(recent))


class _Endpoint:
    """A canary target whose traffic and rollback are scripted per poll."""

    def __init__(self, counts: list[int], rollback_at: int | None = None) -> None:
        self.counts = counts
        self.rollback_at = rollback_at
        self.polls = 0
        self.started: tuple[int, float] | None = None

    def start_canary(self, version: int, percent: float) -> None:
        self.started = (version, percent)

    def canary_requests(self) -> int:
        return self.counts[min(self.polls, len(self.counts) - 1)]

    def canary_rolled_back(self) -> str | None:
        self.polls += 1
        if self.rollback_at is not None and self.polls >= self.rollback_at:
            return "p95 latency 80 ms above the champion's"
        return None

    def end_canary(self, promoted: bool) -> None:
        pass


def test_a_canary_is_judged_after_enough_requests() -> None:
    endpoint = _Endpoint([0, 40, 120, 250])
    outcome = _watch_canary(endpoint, 3, 10.0, 200, 5.0, 0.0, lambda _m: None)
    assert endpoint.started == (3, 10.0)
    assert outcome.healthy and outcome.requests >= 200


def test_a_canary_rolled_back_by_serving_is_unhealthy() -> None:
    endpoint = _Endpoint([0, 10, 20], rollback_at=2)
    outcome = _watch_canary(endpoint, 3, 10.0, 200, 5.0, 0.0, lambda _m: None)
    assert not outcome.healthy
    assert outcome.reason == "p95 latency 80 ms above the champion's"


def test_a_quiet_canary_is_inconclusive_when_its_time_is_up() -> None:
    endpoint = _Endpoint([0, 3])
    outcome = _watch_canary(endpoint, 3, 10.0, 200, 0.001, 0.01, lambda _m: None, 50)
    assert outcome.inconclusive and outcome.requests == 3
    assert "fewer than the 50 needed" in outcome.reason
    assert outcome.to_dict()["inconclusive"] is True


def test_a_canary_with_enough_requests_is_judged_when_its_time_is_up() -> None:
    endpoint = _Endpoint([0, 60])
    outcome = _watch_canary(endpoint, 3, 10.0, 200, 0.001, 0.01, lambda _m: None, 50)
    assert outcome.healthy and not outcome.inconclusive and outcome.requests == 60
    assert "without a rollback" in outcome.reason


def test_retrain_section_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"retrain\.canary_percent"):
        _config(tmp_path, canary_percent=150)
    with pytest.raises(ConfigError, match=r"retrain\.watch_interval"):
        _config(tmp_path, watch_interval="soon")
    with pytest.raises(ConfigError, match=r"retrain\.triggers"):
        _config(tmp_path, triggers='["weather"]')

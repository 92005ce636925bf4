"""`benchmarks/tune_overhead.py`'s timeline: the figures of its ASHA comparison (time to
within 1% of FIFO's best, best at an equal time budget, start-up, trial processes) come
from these few methods, so they are checked on a hand-made series of results."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.tune_overhead import Timeline, variant_overrides


def _timeline(points: list[tuple[float, float]], pids: set[int]) -> Timeline:
    timeline = Timeline("val_loss")
    timeline.points = list(points)
    timeline.pids = set(pids)
    return timeline


def test_time_to_is_the_first_result_at_or_under_the_target() -> None:
    timeline = _timeline([(4.0, 0.50), (6.0, 0.30), (9.0, 0.25), (12.0, 0.24)], {1})
    assert timeline.time_to(0.30) == 6.0
    assert timeline.time_to(0.245) == 12.0
    assert timeline.time_to(0.10) is None


def test_best_at_a_budget_sees_only_earlier_results() -> None:
    timeline = _timeline([(4.0, 0.50), (6.0, 0.30), (9.0, 0.25)], {1})
    assert timeline.best_at(3.9) is None
    assert timeline.best_at(6.0) == 0.30
    assert timeline.best_at(100.0) == 0.25


def test_first_and_last_result_times() -> None:
    timeline = _timeline([(4.0, 0.50), (6.0, 0.30), (9.0, 0.25)], {1})
    assert (timeline.first(), timeline.last()) == (4.0, 9.0)


def test_record_keeps_the_metric_and_the_reporting_process() -> None:
    timeline = Timeline("val_loss")
    timeline.record({"val_loss": 0.4, "pid": 11})
    timeline.record({"val_loss": 0.3, "pid": 12})
    timeline.record({"val_loss": 0.2, "pid": 11})
    timeline.record({"epoch": 3, "pid": 13})  # no metric: a process, no point
    assert [value for _, value in timeline.points] == [0.4, 0.3, 0.2]
    assert timeline.pids == {11, 12, 13}
    times = [t for t, _ in timeline.points]
    assert times == sorted(times) and times[0] >= 0.0


def test_an_empty_timeline_has_no_first_result() -> None:
    with pytest.raises(IndexError):
        Timeline("val_loss").first()


def test_an_asha_variant_names_grace_factor_and_actor_reuse() -> None:
    assert variant_overrides("5:3") == (
        "tune.grace_period=5",
        "tune.reduction_factor=3.0",
        "tune.reuse_actors=true",
    )
    assert variant_overrides("2:2.5:no-reuse")[1:] == (
        "tune.reduction_factor=2.5",
        "tune.reuse_actors=false",
    )


@pytest.mark.parametrize("spec", ["5", "5:3:reuse", "a:3", "1:2:no-reuse:x"])
def test_a_malformed_asha_variant_is_refused(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"GRACE:FACTOR|invalid"):
        variant_overrides(spec)

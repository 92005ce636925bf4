"""Resource planning of the Tune search, without starting Ray: concurrency never asks for
more CPUs/GPUs than the cluster has, and impossible requests fail before any trial runs."""

from __future__ import annotations

import pytest

from raymlops.core.config import PipelineConfig, load_config
from raymlops.core.errors import ResourceError
from raymlops.train.search import plan_concurrency, trial_resources


def _config(*overrides: str) -> PipelineConfig:
    return load_config(None, list(overrides))


@pytest.mark.parametrize(
    ("cpus_per_trial", "cluster_cpus", "expected"),
    [(1, 2, 2), (0.5, 2, 4), (2, 2, 1), (1, 16, 8), (1.5, 4, 2)],
)
def test_concurrency_follows_cluster_cpus(
    cpus_per_trial: float, cluster_cpus: float, expected: int
) -> None:
    # The embedded default samples 8 configurations, which caps concurrency at 8.
    config = _config(f"tune.cpus_per_trial={cpus_per_trial}")
    assert plan_concurrency(config, {"CPU": cluster_cpus}) == expected


def test_concurrency_is_capped_by_configured_limit_and_samples() -> None:
    assert plan_concurrency(_config("tune.max_concurrent_trials=1"), {"CPU": 8}) == 1
    assert plan_concurrency(_config("tune.num_samples=3"), {"CPU": 8}) == 3


def test_grid_points_multiply_the_trial_count() -> None:
    config = _config(
        "tune.num_samples=1",
        "tune.search_space={train.batch_size: {type: grid, values: [8, 16, 32, 64]}}",
    )
    assert plan_concurrency(config, {"CPU": 8}) == 4


def test_gpu_trials_are_limited_by_gpus() -> None:
    config = _config("tune.gpus_per_trial=1", "tune.cpus_per_trial=1")
    assert plan_concurrency(config, {"CPU": 16, "GPU": 2}) == 2
    half = _config("tune.gpus_per_trial=0.5")
    assert plan_concurrency(half, {"CPU": 16, "GPU": 1}) == 2


def test_trial_resources_are_what_the_config_asks() -> None:
    assert trial_resources(_config()) == {"cpu": 1.0, "gpu": 0.0}
    gpu = _config("tune.gpus_per_trial=1", "tune.cpus_per_trial=4")
    assert trial_resources(gpu) == {"cpu": 4.0, "gpu": 1.0}


def test_more_cpus_than_the_cluster_has_fails_fast() -> None:
    with pytest.raises(ResourceError, match=r"cpus_per_trial=4 but the Ray cluster has 2 CPUs"):
        plan_concurrency(_config("tune.cpus_per_trial=4"), {"CPU": 2})


def test_gpu_request_on_a_cpu_cluster_fails_fast() -> None:
    with pytest.raises(ResourceError, match=r"gpus_per_trial=1 but the Ray cluster has 0 GPUs"):
        plan_concurrency(_config("tune.gpus_per_trial=1"), {"CPU": 2})


@pytest.mark.parametrize(
    ("found", "need", "expected"),
    [
        ((0.5, 1.0), 1.0, 0.5),  # replicas hold half of every node: trials take half
        ((0.55, 1.0), 1.0, 0.55),
        ((1.0, 1.0), 1.0, 1.0),  # a whole CPU free somewhere: unchanged
        ((0.0, 1.0), 1.0, 1.0),  # nothing free at all: wait (the stall watch guards)
        ((2.0, 2.0), 64.0, 64.0),  # no node that large: stays plan_concurrency's error
        (None, 1.0, 1.0),  # the resource state unreadable: unchanged
    ],
)
def test_single_process_trials_fit_the_cpu_fragments_replicas_leave(
    monkeypatch: pytest.MonkeyPatch,
    found: tuple[float, float] | None,
    need: float,
    expected: float,
) -> None:
    from raymlops.core import ray_session
    from raymlops.train.search import _fit_fragments

    monkeypatch.setattr(ray_session, "largest_free_cpus", lambda: found)
    config = load_config(None, [f"tune.cpus_per_trial={need}"])
    assert _fit_fragments(config, echo=False).tune.cpus_per_trial == expected
    # A Ray Train trial's workers reserve their own CPUs: never changed here.
    parallel = load_config(None, [f"tune.cpus_per_trial={need}", "train.num_workers=2"])
    assert _fit_fragments(parallel, echo=False).tune.cpus_per_trial == need


def test_trials_that_must_wait_for_a_cpu_say_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from raymlops.core import ray_session
    from raymlops.train.search import _fit_fragments

    config = load_config(None, ["tune.cpus_per_trial=1"])
    monkeypatch.setattr(ray_session, "largest_free_cpus", lambda: (0.0, 1.0))
    assert _fit_fragments(config, echo=True).tune.cpus_per_trial == 1
    assert "no node has a CPU free now" in capsys.readouterr().err
    monkeypatch.setattr(ray_session, "largest_free_cpus", lambda: (1.0, 1.0))
    _fit_fragments(config, echo=True)
    assert capsys.readouterr().err == ""

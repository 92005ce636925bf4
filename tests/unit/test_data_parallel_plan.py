"""Planning of data-parallel trials and the streaming data pass, without starting Ray:
what a trial reserves, how many run at once, the one-line errors for impossible requests,
and that the streaming pass agrees with the in-memory loader where it should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raymlops.core.config import PipelineConfig, load_config
from raymlops.core.errors import DataError, ResourceError
from raymlops.data.dataset import load_dataset, synth_dataset
from raymlops.train.search import plan_concurrency, trial_resources, uses_train_run
from raymlops.train.streaming import (
    _BottomK,
    arrays_to_table,
    batch_to_arrays,
    scan_dataset,
    split_codes,
)


def _config(*overrides: str) -> PipelineConfig:
    return load_config(None, ["tune.num_samples=8", *overrides])


# --------------------------------------------------------------------------- resources


def test_one_worker_keeps_the_single_process_trial() -> None:
    config = _config()
    assert not uses_train_run(config)
    assert trial_resources(config) == {"cpu": 1.0, "gpu": 0.0}


def test_a_data_parallel_trial_reserves_nothing_itself() -> None:
    config = _config("train.num_workers=2")
    assert uses_train_run(config)
    # Its workers hold the CPUs; the trial's own process only waits for them.
    assert trial_resources(config) == {"cpu": 0.0, "gpu": 0.0, "memory": 1.0}
    assert uses_train_run(_config("data.streaming=true"))


@pytest.mark.parametrize(
    ("overrides", "cluster", "expected"),
    [
        (["train.num_workers=2"], {"CPU": 2}, 1),
        (["train.num_workers=2"], {"CPU": 8}, 4),
        (["train.num_workers=2", "train.cpus_per_worker=0.5"], {"CPU": 2}, 2),
        (["train.num_workers=3", "train.cpus_per_worker=2"], {"CPU": 13}, 2),
        (["train.num_workers=2", "train.ingest_cpus=1"], {"CPU": 9}, 3),
        (["train.num_workers=2", "train.use_gpu=true"], {"CPU": 64, "GPU": 4}, 2),
        (
            ["train.num_workers=2", "train.use_gpu=true", "train.gpus_per_worker=0.5"],
            {"CPU": 64, "GPU": 2},
            2,
        ),
        (["train.num_workers=2", "tune.max_concurrent_trials=1"], {"CPU": 64}, 1),
    ],
)
def test_concurrency_counts_every_worker(
    overrides: list[str], cluster: dict[str, float], expected: int
) -> None:
    assert plan_concurrency(_config(*overrides), cluster) == expected


def test_more_worker_cpus_than_the_cluster_has_fails_in_one_line() -> None:
    with pytest.raises(ResourceError) as info:
        plan_concurrency(_config("train.num_workers=4"), {"CPU": 2})
    message = str(info.value)
    assert message == (
        "train.num_workers=4 × train.cpus_per_worker=1 = 4 CPUs but the Ray cluster has 2 CPUs"
    )
    assert "\n" not in message


def test_gpu_workers_on_a_cpu_cluster_fail_fast() -> None:
    with pytest.raises(ResourceError, match=r"gpus_per_worker=1 = 2 GPUs but .* 0 GPUs"):
        plan_concurrency(_config("train.num_workers=2", "train.use_gpu=true"), {"CPU": 16})


def test_use_gpu_with_one_worker_reserves_a_gpu_for_the_trial() -> None:
    config = _config("train.use_gpu=true")
    assert trial_resources(config) == {"cpu": 1.0, "gpu": 1.0}
    with pytest.raises(ResourceError, match=r"train.use_gpu .* 0 GPUs"):
        plan_concurrency(config, {"CPU": 4})


@pytest.mark.parametrize("bad", ["train.num_workers=0", "train.cpus_per_worker=0"])
def test_worker_counts_and_sizes_are_validated(bad: str) -> None:
    from raymlops.core.errors import ConfigError

    with pytest.raises(ConfigError):
        _config(bad)


# --------------------------------------------------------------------------- streaming pass


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stream") / "parts"
    synth_dataset(str(folder), rows=20_000, features=4, categorical=1, chunk_rows=5_000)
    return folder


def _stream_config(path: Path, *extra: str) -> PipelineConfig:
    return load_config(
        None,
        [
            f"data.path={path}",
            "data.label=label",
            "data.id_columns=[id]",
            "data.streaming=true",
            "data.stream_sample_rows=3000",
            *extra,
        ],
    )


def test_split_codes_depend_on_row_content_and_seed_only() -> None:
    table = pa.table({"a": np.arange(10_000), "b": np.arange(10_000) * 0.5})
    codes = split_codes(table, 42, 0.15, 0.15)
    # The same rows in another order or another batch get the same codes.
    assert np.array_equal(split_codes(table.slice(5000), 42, 0.15, 0.15), codes[5000:])
    reordered = table.take(pa.array(np.arange(9_999, -1, -1)))
    assert np.array_equal(split_codes(reordered, 42, 0.15, 0.15), codes[::-1])
    assert not np.array_equal(split_codes(table, 43, 0.15, 0.15), codes)
    shares = np.bincount(codes, minlength=3) / len(codes)
    assert shares == pytest.approx([0.7, 0.15, 0.15], abs=0.02)


def test_scan_gives_the_loaders_digest_and_a_bounded_sample(parts: Path) -> None:
    config = _stream_config(parts)
    data = scan_dataset(config.data, config.features)
    memory, _, _ = load_dataset(config.data, config.features)
    assert data.version.digest == memory.digest
    assert data.version.num_rows == 20_000
    split = data.version.split
    assert split["train"] + split["validation"] + split["test"] == 20_000
    assert data.version.profile["sampled_rows"] == 3000
    assert data.version.profile["num_rows"] == split["train"]
    assert data.version.classes == ["0", "1"]
    # The fitted scaling comes from the sample: close to the whole training data's.
    assert data.preprocessor["mean"]["f0"] == pytest.approx(0.0, abs=0.08)
    assert data.preprocessor["std"]["f0"] == pytest.approx(1.0, abs=0.08)
    # Each split's rows, streamed, are what the scan counted.
    assert sum(t.num_rows for t in data.batches("validation")) == split["validation"]


def test_bottom_k_is_a_bounded_deterministic_sample() -> None:
    table = pa.table({"a": np.arange(50_000)})
    first, second = _BottomK(1000, 7), _BottomK(1000, 7)
    for start in range(0, 50_000, 4096):
        first.add(table.slice(start, 4096))
    second.add(table)
    assert first.table is not None and second.table is not None
    assert first.table.num_rows == 1000
    assert sorted(first.table.column("a").to_pylist()) == sorted(
        second.table.column("a").to_pylist()
    )


def test_streaming_rejects_a_bundled_dataset() -> None:
    config = load_config(None, ["data.streaming=true"])
    with pytest.raises(DataError, match="Parquet or CSV"):
        scan_dataset(config.data, config.features)


def test_fixed_size_rows_round_trip_without_python_objects() -> None:
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    y = np.arange(6, dtype=np.int64)
    table = pa.concat_tables([arrays_to_table(x[:2], y[:2]), arrays_to_table(x[2:], y[2:])])
    back_x, back_y = batch_to_arrays(table.slice(1, 4), 4)
    assert np.array_equal(back_x, x[1:5])
    assert np.array_equal(back_y, y[1:5])

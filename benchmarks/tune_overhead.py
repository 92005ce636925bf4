"""Tune overhead and ASHA speed-up on trials of the embedded default's size.

The embedded default's model and search space (MLP depth 1-3, width 16-128, learning rate,
activation, dropout) on a small tabular table of the same width (30 numeric features,
12,000 synthetic rows by default), so that each trial takes a couple of seconds: long
enough to be a real trial, short enough that per-trial overhead shows.

(a) N configs × E epochs through raymlops' Tune search (FIFO, 2 trials at a time, 1 CPU
    and 1 torch thread each), (b) the same configs as a plain sequential loop in this
    process calling the same `raymlops.train.fit` with 2 torch threads, and
(c) ASHA vs FIFO on the same sampled configs: the wall time until each search's
    best-so-far validation metric first comes within 1% of FIFO's final best.

Prints the figures and, as its last line, one JSON object with `tune_vs_plain` ((a)/(b)
wall time, lower is better) and `asha_speedup` (FIFO time ÷ ASHA time for (c)).

    python benchmarks/tune_overhead.py            # 16 configs × 10 epochs (the goal's size)
    python benchmarks/tune_overhead.py --quick    # same size, one repetition
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raymlops.config import PipelineConfig, load_config
from raymlops.data import load_dataset, synth_dataset
from raymlops.features import Preprocessor
from raymlops.launcher import ray_session
from raymlops.train import TrainingArrays, fit
from raymlops.tune import run_search


class _Timeline:
    """Driver-side record of (seconds since start, metric) for every reported result."""

    def __init__(self, metric: str) -> None:
        from ray.tune import Callback

        outer = self
        self.metric = metric
        self.start = 0.0
        self.points: list[tuple[float, float]] = []

        class _CB(Callback):  # type: ignore[misc]
            def on_trial_result(
                self, iteration: int, trials: Any, trial: Any, result: Any, **info: Any
            ) -> None:
                value = result.get(outer.metric)
                if value is not None:
                    outer.points.append((time.perf_counter() - outer.start, float(value)))

        self.callback = _CB()

    def time_to(self, target: float) -> float | None:
        """First time a reported metric was ≤ target (metrics are minimised here)."""
        for t, value in self.points:
            if value <= target:
                return t
        return None


def _dataset(args: argparse.Namespace) -> str:
    """The benchmark's data: a cached synthetic table the width of the embedded default."""
    folder = Path(__file__).resolve().parent / ".data"
    path = folder / f"tune-synth-{args.rows}x30.parquet"
    if not path.exists():
        synth_dataset(str(path), rows=args.rows, features=30, seed=0)
    return str(path)


def _config(args: argparse.Namespace, scheduler: str) -> PipelineConfig:
    data = (
        []
        if args.embedded
        else [
            f"data.path={_dataset(args)}",
            "data.label=label",
            "data.id_columns=[id]",
            "data.task=classification",
        ]
    )
    return load_config(
        None,
        [
            *data,
            f"tune.num_samples={args.configs}",
            f"tune.scheduler={scheduler}",
            "tune.max_concurrent_trials=2",
            "tune.cpus_per_trial=1",
            "tune.metric=val_loss",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            "train.early_stopping_patience=null",
            "train.torch_threads=1",
        ],
    )


def _search(config: PipelineConfig, arrays: TrainingArrays, home: Path) -> tuple[Any, _Timeline]:
    timeline = _Timeline("val_loss")
    timeline.start = time.perf_counter()
    outcome = run_search(config, arrays, home, echo=False, callbacks=[timeline.callback])
    return outcome, timeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One repetition (under 2 minutes).")
    parser.add_argument("--configs", type=int, default=16, help="Configurations (default 16).")
    parser.add_argument("--epochs", type=int, default=10, help="Epochs per trial (default 10).")
    parser.add_argument("--batch-size", type=int, default=32, help="Batch size (default 32).")
    parser.add_argument(
        "--rows",
        type=int,
        default=12_000,
        help="Rows of the synthetic table (default 12000: ~2 s trials).",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="Use the embedded breast-cancer data itself (trials of ~0.2 s).",
    )
    parser.add_argument("--repeats", type=int, default=2, help="Repetitions (--quick: 1).")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    fifo = _config(args, "fifo")
    asha = _config(args, "asha")
    _, splits, roles = load_dataset(fifo.data, fifo.features)
    prep = Preprocessor.fit(splits.train, roles, fifo.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    print(
        f"data: {fifo.data.path} ({splits.train.num_rows} training rows, "
        f"{prep.n_outputs} inputs); {args.configs} configs × {args.epochs} epochs, "
        f"batch {args.batch_size}; {os.cpu_count()} CPUs"
    )

    # `raymlops train` has MLflow imported before the search starts (it checks the tracking
    # store first); Tune imports it again for its callback telemetry, so do the same here.
    import mlflow  # noqa: F401

    t0 = time.perf_counter()
    with ray_session(), tempfile.TemporaryDirectory() as tmp:
        ray_start = time.perf_counter() - t0
        home = Path(tmp)
        tune_times, plain_times, fifo_hits, asha_hits, speedups = [], [], [], [], []
        for rep in range(repeats):
            fifo_out, fifo_line = _search(fifo, arrays, home)
            tune_times.append(fifo_out.wall_time_s)
            configs = [t.params for t in fifo_out.trials]

            torch.set_num_threads(2)
            start = time.perf_counter()
            for params in configs:
                fit(fifo.apply_trial(params), arrays, lambda metrics, folder: None)
            plain_times.append(time.perf_counter() - start)

            asha_out, asha_line = _search(asha, arrays, home)
            best = min(v for _, v in fifo_line.points)
            target = best * 1.01
            t_fifo = fifo_line.time_to(target)
            t_asha = asha_line.time_to(target)
            assert t_fifo is not None
            fifo_hits.append(t_fifo)
            asha_hits.append(t_asha)
            speedups.append(t_fifo / t_asha if t_asha else float("nan"))
            asha_best = min(v for _, v in asha_line.points)
            print(
                f"rep {rep + 1}: tune FIFO {fifo_out.wall_time_s:.2f}s vs plain loop "
                f"{plain_times[-1]:.2f}s (ratio {fifo_out.wall_time_s / plain_times[-1]:.2f}); "
                f"FIFO best val_loss {best:.4f} reached within 1% at {t_fifo:.2f}s "
                f"(search took {fifo_out.wall_time_s:.2f}s), ASHA best {asha_best:.4f} "
                + (f"within 1% at {t_asha:.2f}s" if t_asha else "never within 1%")
                + f" (search took {asha_out.wall_time_s:.2f}s, "
                f"{sum(len(t.history) for t in asha_out.trials)} epochs run vs "
                f"{sum(len(t.history) for t in fifo_out.trials)})"
            )
    tune_s = min(tune_times)
    plain_s = min(plain_times)
    valid = [s for s in speedups if s == s]
    figures = {
        "benchmark": "tune_overhead",
        "configs": args.configs,
        "epochs": args.epochs,
        "tune_s": round(tune_s, 3),
        "plain_s": round(plain_s, 3),
        "tune_vs_plain": round(tune_s / plain_s, 3),
        "fifo_time_to_1pct_s": round(min(fifo_hits), 3),
        "asha_time_to_1pct_s": round(min(h for h in asha_hits if h), 3) if any(asha_hits) else None,
        "asha_speedup": round(sorted(valid)[len(valid) // 2], 3) if valid else None,
        "ray_start_s": round(ray_start, 3),
        "repeats": repeats,
    }
    print(f"(a)/(b) Tune vs plain loop wall time: {figures['tune_vs_plain']} (goal ≤ 1.0)")
    print(f"(c) ASHA speed-up to within 1% of FIFO's best: {figures['asha_speedup']} (goal ≥ 3)")
    print(f"Ray start-up (not in the ratios): {ray_start:.2f}s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

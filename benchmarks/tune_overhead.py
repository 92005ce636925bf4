"""Tune overhead and ASHA speed-up on trials of the embedded default's size.

The embedded default's data (569 rows × 30 features), model and search space (MLP depth
1-3, width 16-128, learning rate, activation, dropout), batch size 8 and 30 epochs, so that
each trial takes a second or two: a real trial, short enough that per-trial overhead shows.

(a) N configs × E epochs through raymlops' Tune search (FIFO, 2 trials at a time, 1 CPU
    and 1 torch thread each), against
(b) the same configs as a plain sequential loop in this process calling the same
    `raymlops.train.loop.fit` with 2 torch threads (and, outside --quick, with 1 thread; the
    faster of the two is the baseline), and
(c) ASHA vs FIFO on the same sampled configs: the wall time from the start of the search
    until its best-so-far validation loss first comes within 1% of FIFO's final best.

Every repetition samples other configurations (search seed = repetition). Ray's start-up
is reported separately; both searches pay Tune's own start-up (trial workers importing
Ray Tune and torch), which is inside the ratios.

Prints the figures and, as its last line, one JSON object with `tune_vs_plain` ((a)/(b)
wall time, best repetition, lower is better) and `asha_speedup` (FIFO time ÷ ASHA time for
(c), median over repetitions).

    python benchmarks/tune_overhead.py            # 16 configs × 30 epochs, 3 repetitions
    python benchmarks/tune_overhead.py --quick    # 1 repetition, under 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raymlops.cluster.launcher import ray_session
from raymlops.core.config import PipelineConfig, load_config
from raymlops.data.dataset import load_dataset, synth_dataset
from raymlops.model.features import Preprocessor
from raymlops.train.loop import TrainingArrays, fit
from raymlops.train.search import run_search


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


def _config(args: argparse.Namespace, scheduler: str, seed: int) -> PipelineConfig:
    data = (
        []
        if not args.rows
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
            f"tune.seed={seed}",
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
    parser.add_argument("--epochs", type=int, default=30, help="Epochs per trial (default 30).")
    parser.add_argument("--batch-size", type=int, default=8, help="Batch size (default 8).")
    parser.add_argument(
        "--rows",
        type=int,
        default=0,
        help="Use a synthetic table of ROWS × 30 features instead of the embedded data.",
    )
    parser.add_argument("--repeats", type=int, default=3, help="Repetitions (--quick: 1).")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    fifo = _config(args, "fifo", 0)
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
        search_ratios: list[float] = []
        epoch_ratios: list[float] = []
        for rep in range(repeats):
            # Each repetition samples other configurations (search seed = rep), the same
            # ones for FIFO, ASHA and the plain loop.
            fifo = _config(args, "fifo", rep)
            asha = _config(args, "asha", rep)
            fifo_out, fifo_line = _search(fifo, arrays, home)
            tune_times.append(fifo_out.wall_time_s)
            configs = [t.params for t in fifo_out.trials]

            # The baseline: the same configs one after another in this process with the
            # same total threads (2); outside --quick also with 1 thread, which is faster
            # for models this small, and the faster of the two is the baseline.
            loop_times = {}
            for threads in (2,) if args.quick else (2, 1):
                torch.set_num_threads(threads)
                start = time.perf_counter()
                for params in configs:
                    fit(fifo.apply_trial(params), arrays, lambda metrics, folder: None)
                loop_times[threads] = time.perf_counter() - start
            plain_times.append(min(loop_times.values()))
            print(
                "plain loop: " + ", ".join(f"{t} thread(s) {s:.2f}s" for t, s in loop_times.items())
            )

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
            search_ratios.append(fifo_out.wall_time_s / asha_out.wall_time_s)
            epoch_ratios.append(
                sum(len(t.history) for t in fifo_out.trials)
                / sum(len(t.history) for t in asha_out.trials)
            )
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
    ratios = [t / p for t, p in zip(tune_times, plain_times, strict=True)]
    # A repetition where ASHA never came within 1% of FIFO's best counts as speed-up 0.
    asha_ratios = [s if s == s else 0.0 for s in speedups]
    figures = {
        "benchmark": "tune_overhead",
        "configs": args.configs,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "tune_s": [round(t, 2) for t in tune_times],
        "plain_s": [round(p, 2) for p in plain_times],
        "tune_vs_plain": round(statistics.median(ratios), 3),
        "tune_vs_plain_each": [round(r, 3) for r in ratios],
        "fifo_time_to_1pct_s": [round(h, 2) for h in fifo_hits],
        "asha_time_to_1pct_s": [round(h, 2) if h else None for h in asha_hits],
        "asha_speedup": round(statistics.median(asha_ratios), 3),
        "asha_speedup_each": [round(r, 3) for r in asha_ratios],
        # Context, not the goal: whole-search wall time and epochs trained, FIFO ÷ ASHA.
        "asha_search_time_ratio_each": [round(r, 2) for r in search_ratios],
        "asha_epochs_ratio_each": [round(r, 2) for r in epoch_ratios],
        "ray_start_s": round(ray_start, 3),
        "repeats": repeats,
    }
    print(
        f"(a)/(b) Tune vs plain loop wall time, median of {repeats}: "
        f"{figures['tune_vs_plain']} (goal ≤ 1.0)"
    )
    print(
        f"(c) ASHA speed-up to within 1% of FIFO's best, median of {repeats}: "
        f"{figures['asha_speedup']} (goal ≥ 3)"
    )
    print(f"Ray start-up (not in the ratios): {ray_start:.2f}s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

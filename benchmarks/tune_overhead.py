"""Tune overhead and ASHA speed-up, on the embedded default's trials or on long ones.

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

`--workload long` is a search where ASHA matters: a synthetic table from
`raymlops.data.synth_dataset` (500,000 rows × 30 features, 350,000 training rows), the same
search space, 32 configurations × 30 epochs at batch size 256, so that a trial takes about
35 s on 2 quiet cores; ASHA with what a user would set for 30 epochs (grace period 3,
reduction factor 3: rungs at epochs 3, 9 and 27). It measures (c) only (the plain loop
would add 10-20 minutes per seed), and for each search:
the quality both schedulers reach at the same time budget (best validation loss at ASHA's
total wall time), the start-up (time to the first reported result) and how many trial
processes ran (with `reuse_actors`, one per concurrent slot). Each seed's ASHA search starts
right after its FIFO search, as `watch`'s retrain searches follow one another.

Prints the figures and, as its last line, one JSON object with `tune_vs_plain` ((a)/(b)
wall time, median over repetitions, lower is better; default workload only) and
`asha_speedup` (FIFO time ÷ ASHA time for (c), median over repetitions).

    python benchmarks/tune_overhead.py                   # 16 configs × 30 epochs, 3 repetitions
    python benchmarks/tune_overhead.py --quick           # 1 repetition, under 2 minutes
    python benchmarks/tune_overhead.py --workload long   # 3 seeds, about 55 min quiet
    python benchmarks/tune_overhead.py --workload long --repeats 1 --also-asha 2:3
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


class Timeline:
    """Driver-side record of (seconds since start, metric) for every reported result, and
    the trial processes (pids) that reported them."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.start = time.perf_counter()
        self.points: list[tuple[float, float]] = []
        self.pids: set[int] = set()

    def record(self, result: dict[str, Any]) -> None:
        """Note one trial result (Tune fills in `pid` for every result)."""
        value = result.get(self.metric)
        if value is not None:
            self.points.append((time.perf_counter() - self.start, float(value)))
        if result.get("pid") is not None:
            self.pids.add(int(result["pid"]))

    def callback(self) -> Any:
        """A Tune callback that records every trial result here."""
        from ray.tune import Callback

        outer = self

        class _Recorder(Callback):  # type: ignore[misc]
            def on_trial_result(
                self, iteration: int, trials: Any, trial: Any, result: Any, **info: Any
            ) -> None:
                outer.record(result)

        return _Recorder()

    def time_to(self, target: float) -> float | None:
        """First time a reported metric was ≤ target (metrics are minimised here)."""
        for t, value in self.points:
            if value <= target:
                return t
        return None

    def best_at(self, budget: float) -> float | None:
        """The best metric reported within `budget` seconds of the start (None: nothing yet)."""
        values = [value for t, value in self.points if t <= budget]
        return min(values) if values else None

    def first(self) -> float:
        """Seconds from the start to the first reported result: the search's start-up."""
        return self.points[0][0]

    def last(self) -> float:
        """Seconds from the start to the last reported result."""
        return self.points[-1][0]


def _dataset(args: argparse.Namespace) -> str:
    """The benchmark's data: a cached synthetic table the width of the embedded default."""
    folder = Path(__file__).resolve().parent / ".data"
    path = folder / f"tune-synth-{args.rows}x30.parquet"
    if not path.exists():
        synth_dataset(str(path), rows=args.rows, features=30, seed=0)
    return str(path)


def _config(
    args: argparse.Namespace, scheduler: str, seed: int, extra: tuple[str, ...] = ()
) -> PipelineConfig:
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
            f"tune.reuse_actors={'false' if args.no_reuse_actors else 'true'}",
            *([f"tune.grace_period={args.grace_period}"] if args.grace_period else []),
            *([f"tune.reduction_factor={args.reduction_factor}"] if args.reduction_factor else []),
            *extra,
        ],
    )


def variant_overrides(spec: str) -> tuple[str, ...]:
    """The config overrides of an `--also-asha` variant `GRACE:FACTOR[:no-reuse]`, e.g.
    `5:3` (grace period 5, reduction factor 3) or `2:3:no-reuse` (a new trial process for
    every trial)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "no-reuse"):
        raise argparse.ArgumentTypeError(f"--also-asha {spec!r}: expected GRACE:FACTOR[:no-reuse]")
    try:
        grace, factor = int(parts[0]), float(parts[1])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--also-asha {spec!r}: {exc}") from None
    reuse = "false" if len(parts) == 3 else "true"
    return (
        f"tune.grace_period={grace}",
        f"tune.reduction_factor={factor}",
        f"tune.reuse_actors={reuse}",
    )


#: What `--workload long` sets unless given on the command line.
_DEFAULT = {"rows": 0, "epochs": 30, "batch_size": 8, "configs": 16}
_LONG = {"rows": 500_000, "epochs": 30, "batch_size": 256, "grace_period": 3, "configs": 32}


def _search(config: PipelineConfig, arrays: TrainingArrays, home: Path) -> tuple[Any, Timeline]:
    timeline = Timeline("val_loss")
    outcome = run_search(config, arrays, home, echo=False, callbacks=[timeline.callback()])
    return outcome, timeline


def _plain_loop(
    config: PipelineConfig, configs: list[dict[str, Any]], arrays: TrainingArrays, quick: bool
) -> float:
    """(b): the configs one after another in this process with the same total threads (2);
    outside --quick also with 1 thread, which is faster for models this small, and the
    faster of the two is the baseline. Returns its wall time."""
    loop_times = {}
    for threads in (2,) if quick else (2, 1):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for params in configs:
            fit(config.apply_trial(params), arrays, lambda metrics, folder: None)
        loop_times[threads] = time.perf_counter() - start
    print("plain loop: " + ", ".join(f"{t} thread(s) {s:.2f}s" for t, s in loop_times.items()))
    return min(loop_times.values())


def _fmt(value: float | None) -> str:
    return "nothing yet" if value is None else f"{value:.4f}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One repetition (under 2 minutes).")
    parser.add_argument(
        "--workload",
        choices=("default", "long"),
        default="default",
        help="default: the embedded data's 1-2 s trials, (a), (b) and (c); long: 500,000 "
        "synthetic rows, trials of tens of seconds, (c) only.",
    )
    parser.add_argument(
        "--configs", type=int, default=None, help="Configurations (default 16; long: 32)."
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="Epochs per trial (default 30; long: 30)."
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="Batch size (default 8; long: 256)."
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="Use a synthetic table of ROWS × 30 features instead of the embedded data "
        "(long: 500000).",
    )
    parser.add_argument(
        "--grace-period", type=int, default=None, help="ASHA grace period (default 1; long: 3)."
    )
    parser.add_argument(
        "--reduction-factor", type=float, default=None, help="ASHA reduction factor (default 3)."
    )
    parser.add_argument(
        "--no-reuse-actors",
        action="store_true",
        help="A new trial process for every trial (tune.reuse_actors=false).",
    )
    parser.add_argument(
        "--also-asha",
        action="append",
        default=[],
        metavar="GRACE:FACTOR[:no-reuse]",
        help="After each ASHA search, also run ASHA with this grace period and reduction "
        "factor (and without reuse_actors) against the same FIFO target; repeatable.",
    )
    parser.add_argument("--repeats", type=int, default=3, help="Repetitions (--quick: 1).")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="Search seed of the first repetition (0)."
    )
    args = parser.parse_args()
    try:
        variants = {spec: variant_overrides(spec) for spec in args.also_asha}
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    defaults = _LONG if args.workload == "long" else _DEFAULT
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    repeats = 1 if args.quick else args.repeats
    with_plain = args.workload == "default"

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
        # Per repetition: ASHA's total time, each scheduler's best at that budget, start-up
        # (time to the first result) and trial processes of each search.
        budgets, fifo_at_budget, asha_at_budget = [], [], []
        startups: list[tuple[float, float]] = []
        processes: list[tuple[int, int]] = []
        tried: dict[str, list[dict[str, Any]]] = {spec: [] for spec in variants}
        for rep in range(args.first_seed, args.first_seed + repeats):
            # Each repetition samples other configurations (search seed = rep), the same
            # ones for FIFO, ASHA and the plain loop.
            fifo = _config(args, "fifo", rep)
            asha = _config(args, "asha", rep)
            fifo_out, fifo_line = _search(fifo, arrays, home)
            tune_times.append(fifo_out.wall_time_s)
            configs = [t.params for t in fifo_out.trials]

            if with_plain:
                plain_times.append(_plain_loop(fifo, configs, arrays, args.quick))

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
            budget = asha_line.last()
            budgets.append(budget)
            fifo_at_budget.append(fifo_line.best_at(budget))
            asha_at_budget.append(asha_best)
            startups.append((fifo_line.first(), asha_line.first()))
            processes.append((len(fifo_line.pids), len(asha_line.pids)))
            for spec, extra in variants.items():
                out, line = _search(_config(args, "asha", rep, extra), arrays, home)
                hit = line.time_to(target)
                tried[spec].append(
                    {
                        "speedup": round(t_fifo / hit, 3) if hit else 0.0,
                        "time_to_1pct_s": _round(hit),
                        "search_s": round(out.wall_time_s, 2),
                        "best": _round(min(v for _, v in line.points)),
                        "fifo_best_at_its_budget": _round(fifo_line.best_at(line.last())),
                        "startup_s": round(line.first(), 2),
                        "trial_processes": len(line.pids),
                        "epochs": sum(len(t.history) for t in out.trials),
                    }
                )
                print(f"seed {rep} ASHA {spec}: {tried[spec][-1]}")
            search_ratios.append(fifo_out.wall_time_s / asha_out.wall_time_s)
            epoch_ratios.append(
                sum(len(t.history) for t in fifo_out.trials)
                / sum(len(t.history) for t in asha_out.trials)
            )
            print(
                (
                    f"seed {rep}: tune FIFO {fifo_out.wall_time_s:.2f}s vs plain loop "
                    f"{plain_times[-1]:.2f}s "
                    f"(ratio {fifo_out.wall_time_s / plain_times[-1]:.2f}); "
                    if with_plain
                    else f"seed {rep}: "
                )
                + f"FIFO best val_loss {best:.4f} reached within 1% at {t_fifo:.2f}s "
                f"(search took {fifo_out.wall_time_s:.2f}s), ASHA best {asha_best:.4f} "
                + (f"within 1% at {t_asha:.2f}s" if t_asha else "never within 1%")
                + f" (search took {asha_out.wall_time_s:.2f}s, "
                f"{sum(len(t.history) for t in asha_out.trials)} epochs run vs "
                f"{sum(len(t.history) for t in fifo_out.trials)}); at ASHA's {budget:.1f}s "
                f"FIFO's best was {_fmt(fifo_at_budget[-1])}; start-up (first result) FIFO "
                f"{startups[-1][0]:.2f}s, ASHA {startups[-1][1]:.2f}s; trial processes "
                f"FIFO {processes[-1][0]}, ASHA {processes[-1][1]}"
            )
    ratios = [t / p for t, p in zip(tune_times, plain_times, strict=True)] if with_plain else []
    # A repetition where ASHA never came within 1% of FIFO's best counts as speed-up 0.
    asha_ratios = [s if s == s else 0.0 for s in speedups]
    figures: dict[str, Any] = {
        "benchmark": "tune_overhead",
        "workload": args.workload,
        "rows": args.rows,
        "configs": args.configs,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "grace_period": asha.tune.grace_period,
        "reduction_factor": asha.tune.reduction_factor,
        "reuse_actors": asha.tune.reuse_actors,
        "tune_s": [round(t, 2) for t in tune_times],
    }
    if with_plain:
        figures["plain_s"] = [round(p, 2) for p in plain_times]
        figures["tune_vs_plain"] = round(statistics.median(ratios), 3)
        figures["tune_vs_plain_each"] = [round(r, 3) for r in ratios]
    figures |= {
        "fifo_time_to_1pct_s": [round(h, 2) for h in fifo_hits],
        "asha_time_to_1pct_s": [round(h, 2) if h else None for h in asha_hits],
        "asha_speedup": round(statistics.median(asha_ratios), 3),
        "asha_speedup_each": [round(r, 3) for r in asha_ratios],
        # Context, not the goal: whole-search wall time and epochs trained, FIFO ÷ ASHA.
        "asha_search_time_ratio_each": [round(r, 2) for r in search_ratios],
        "asha_epochs_ratio_each": [round(r, 2) for r in epoch_ratios],
        # Equal time budget (ASHA's whole search): best val_loss each had reached by then.
        "budget_s": [round(b, 2) for b in budgets],
        "fifo_best_at_budget": [_round(v) for v in fifo_at_budget],
        "asha_best_at_budget": [_round(v) for v in asha_at_budget],
        # Start-up (first result) of each FIFO search and of the ASHA search right after it.
        "startup_fifo_s": [round(a, 2) for a, _ in startups],
        "startup_asha_s": [round(b, 2) for _, b in startups],
        "trial_processes_fifo": [a for a, _ in processes],
        "trial_processes_asha": [b for _, b in processes],
        "ray_start_s": round(ray_start, 3),
        "repeats": repeats,
    }
    if tried:
        figures["also_asha"] = {
            spec: {
                "asha_speedup": round(statistics.median(r["speedup"] for r in runs), 3),
                "each": runs,
            }
            for spec, runs in tried.items()
        }
    if with_plain:
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

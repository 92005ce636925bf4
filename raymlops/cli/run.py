"""`raymlops` commands: run, train, submit and jobs: the lifecycle as one command or Ray jobs."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from raymlops.cli.base import (
    F,
    _config_options,
    _fail,
    _handle_errors,
    _home_option,
    _json_out,
    _load,
    cli,
)
from raymlops.cluster.launcher import PIPELINE_STEPS
from raymlops.core.report import say

# --------------------------------------------------------------------------- run / train


_ADDRESS_HELP = (
    "Where to run: a Ray job API (http://head:8265) runs each step as a Ray job; "
    "ray://head:10001 or auto joins a cluster in-process; unset starts a local Ray."
)


def _forward_args(
    config_path: str | None, overrides: tuple[str, ...], working_dir: str | None
) -> list[str]:
    """The step's own arguments for a job whose current directory is `working_dir`."""
    args: list[str] = []
    if config_path is not None:
        path = Path(config_path).resolve()
        if working_dir is not None:
            root = Path(working_dir).resolve()
            if not path.is_relative_to(root):
                raise click.BadParameter(
                    f"{config_path} is outside the uploaded working dir {working_dir}",
                    param_hint="-c/--config",
                )
            path = path.relative_to(root)
        args += ["-c", str(path)]
    for item in overrides:
        args += ["--set", item]
    return args


def _train_dict(result: Any) -> dict[str, Any]:
    """`raymlops train --json`: the registered version and how the search went."""
    return {
        "model": result.model_name,
        "version": result.version.version,
        "aliases": result.version.aliases,
        "run_id": result.run_id,
        "best_params": result.best_params,
        "test_metrics": result.test_metrics,
        "trials": result.trials,
        "failed_trials": result.failed_trials,
        "dataset_digest": result.dataset.digest,
        "first_version_gate": (None if result.first_gate is None else result.first_gate.to_dict()),
    }


def _run_result_dict(result: Any) -> dict[str, Any]:
    """`raymlops run --json`: each step's result (null for a step that did not run), the
    step timings and where the outputs live."""

    def part(value: Any) -> Any:
        return value.to_dict() if value is not None else None

    gate = result.train.first_gate
    failed_first = gate is not None and not gate.passed  # the sample came from a non-champion
    return {
        "train": _train_dict(result.train),
        "champion": None if failed_first else result.champion,
        "sampled_version": result.champion,
        "sample_predictions": json.loads(result.sample_predictions.to_json(orient="records")),
        "gate": part(result.gate),
        "served_url": result.served_url,
        "batch": part(result.batch),
        "monitor": part(result.monitored),
        "retrain": part(result.retrained),
        "card_path": result.card_path,
        "report_path": result.report_path,
        "tracking_uri": result.train.tracking_uri,
        "steps": [{"step": name, "seconds": seconds} for name, seconds in result.steps],
        "wall_time_s": result.wall_time_s,
    }


def _outcome_dict(outcome: Any) -> dict[str, Any]:
    """A Ray job's outcome for --json (its log tail stays out: the job's log has it)."""
    return {
        "step": outcome.step,
        "status": outcome.status,
        "submission_id": outcome.submission_id,
        "submission_ids": outcome.submission_ids,
        "attempts": outcome.attempts,
    }


def _champion(config: Any, home: str | None) -> int | None:
    """The version the champion alias names now (None: none yet)."""
    from raymlops.registry.store import Registry

    return Registry.from_config(config, home).alias_target(config.registry.model_name, "champion")


def _jobs_dict(
    config: Any, home: str | None, outcomes: list[Any], error: str | None
) -> dict[str, Any]:
    """`raymlops run --json` with a job address: the model, its champion, each job's
    outcome and the failed job's error line (null when every job succeeded). After a
    failure the champion is looked up as far as the registry answers (null if not)."""
    if error is None:
        champion = _champion(config, home)
    else:
        try:
            champion = _champion(config, home)
        except Exception:  # the failure is what the document reports, not this lookup
            champion = None
    jobs = [_outcome_dict(o) for o in outcomes]
    return {
        "model": config.registry.model_name,
        "champion": champion,
        "jobs": jobs,
        "error": error,
    }


def _report_jobs(outcomes: list[Any], as_json: bool = False) -> str | None:
    """Each job's end (stdout; stderr with --json, whose caller prints the JSON) and the
    failed one's log tail (stderr); returns the error line of the failed job (None when all
    succeeded), which the caller passes to `_exit_if_failed` after printing its result."""
    for outcome in outcomes:
        say(
            f"{outcome.step}: {outcome.status} (job {outcome.submission_id}, "
            f"attempt {outcome.attempts})",
            err=as_json,
        )
    failed = next((o for o in outcomes if not o.succeeded), None)
    if failed is None:
        return None
    say(f"--- last lines of {failed.submission_id} ---\n{failed.log_tail}")  # stderr
    return f"step {failed.step} {failed.status.lower()} as Ray job {failed.submission_id}"


def _exit_if_failed(error: str | None) -> None:
    """Exit 1 with `error` (from `_report_jobs`) when a job failed: after --json has
    printed its document, so that a failure still prints one."""
    if error is not None:
        _fail(error, 1)


_retries_option = click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Resubmit a failed job (with a new submission id) up to N times.",
)
_working_dir_option = click.option(
    "--working-dir",
    default=".",
    show_default=True,
    help="Folder uploaded as the job's working dir (configs, local data).",
)


@cli.command()
@_config_options
@_home_option
@click.option("--address", default=None, help=_ADDRESS_HELP)
@click.option("--samples", default=5, show_default=True, help="Rows to predict at the end.")
@click.option(
    "--train-only",
    is_flag=True,
    help="Only train → register → gate → champion → sample predictions (no serving, batch, "
    "monitoring or retraining); exit 1 when a version registered with no champion fails its "
    "gate (it stays registered, not champion).",
)
@click.option(
    "--keep-serving",
    is_flag=True,
    help="Leave the endpoint up at the end, serving in the foreground until Ctrl-C.",
)
@_retries_option
@_working_dir_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as JSON (the narration stays on stderr).",
)
@click.option("--step", type=click.Choice(PIPELINE_STEPS), default=None, hidden=True)
@click.option("--work", default=None, hidden=True)
@_handle_errors
def run(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    samples: int,
    train_only: bool,
    keep_serving: bool,
    max_retries: int,
    working_dir: str,
    as_json: bool,
    step: str | None,
    work: str | None,
) -> None:
    """Run the main job: the whole lifecycle on one local Ray, narrated step by step.

    train (Tune) → register → gate → promote → batch inference (Ray Data) → serve (Ray
    Serve) and answer HTTP requests → simulated traffic with drift → monitor detects it →
    retrain → gate → canary → promote → summary with the model card, the drift report and
    the MLflow UI command. Leaves nothing running unless --keep-serving.

    \b
    Example:
      raymlops run
      raymlops run --train-only -c examples/synthetic.yaml --set tune.num_samples=4
      raymlops run --address http://127.0.0.1:8265    # each step as a Ray job

    With a job address, each step (train, gate, promote, batch, serve, traffic, monitor,
    retrain, finish) runs as its own Ray job; they hand over through a run folder under
    the config's `storage` (or $RAYMLOPS_STORAGE: an object store such as s3://bucket/x),
    or under --home when the cluster runs on this machine. A cluster of other machines also
    needs MLFLOW_TRACKING_URI set to its MLflow server; local storage is refused (exit 2).
    """
    from raymlops.cluster.launcher import is_job_address, run_pipeline_as_jobs
    from raymlops.loop.pipeline import run_loop_step, run_pipeline

    config = _load(config_path, overrides)
    if step is not None:  # one step of a job chain (what each Ray job runs)
        if work is None or address is not None:
            raise click.UsageError("--step needs --work and runs where it is started")
        run_loop_step(config, step, work, home=home, keep_serving=keep_serving)
        return
    if is_job_address(address):
        assert address is not None
        args = _forward_args(config_path, overrides, working_dir)
        outcomes = run_pipeline_as_jobs(
            address,
            args,
            config=config,
            home=home,
            working_dir=working_dir,
            max_retries=max_retries,
            train_only=train_only,
            keep_serving=keep_serving,
        )
        error = _report_jobs(outcomes, as_json)
        if as_json:
            _json_out(_jobs_dict(config, home, outcomes, error))
        elif error is None:
            champion = _champion(config, home)
            click.echo(f"champion now: {config.registry.model_name} v{champion}")
        _exit_if_failed(error)
        return
    # Ray prints its notices on stdout: with --json they join the narration on stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = run_pipeline(
            config,
            address=address,
            home=home,
            samples=samples,
            full=not train_only,
            keep_serving=keep_serving,
        )
    if as_json:
        _json_out(_run_result_dict(result))
        _exit_if_first_gate_failed(result.train)
        return
    if not train_only:
        click.echo(result.summary())
        return
    click.echo(result.train.summary())
    trained = result.train.version
    failed_first = result.champion == trained.version and "champion" not in trained.aliases
    role = "not champion: its first-version gate failed" if failed_first else "champion"
    click.echo(
        f"\nsample predictions from {config.registry.model_name} v{result.champion} "
        f"({role}, loaded from the registry):"
    )
    click.echo(result.sample_predictions.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    click.echo(f"\nbrowse runs: mlflow ui --backend-store-uri {result.train.tracking_uri}")
    _exit_if_first_gate_failed(result.train)


def _exit_if_first_gate_failed(result: Any) -> None:
    """Exit 1, as `gate` and `retrain` do on a failed verdict, when the version registered
    with no champion failed its gate (`TrainResult.first_gate`); after the result printed."""
    gate = result.first_gate
    if gate is not None and not gate.passed:
        failed = ", ".join(f"{c.kind} {c.name}" for c in gate.failed_checks[:3])
        _fail(
            f"{result.model_name} v{result.version.version} failed its gate ({failed}): "
            "it stays registered, not champion",
            1,
        )


@cli.command()
@_config_options
@_home_option
@click.option("--address", default=None, help="Ray cluster to join, e.g. ray://head:10001 or auto.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the latest interrupted Tune experiment of this pipeline.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def train(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    resume: bool,
    as_json: bool,
) -> None:
    """Tune hyperparameters on Ray and register the best model in MLflow.

    A model with no champion (its first version, or after its champion was cleared) gets
    one only through the gate: the new version is gated on the gate's thresholds and checks
    and made champion if it passes; if it fails, it stays registered, not champion, and
    the command exits 1. Otherwise the version is the challenger, for `raymlops gate`.

    \b
    Example:
      raymlops train --set tune.num_samples=16 --set tune.scheduler=fifo
      raymlops train --resume          # after a crash or Ctrl-C
    """
    from raymlops.cluster.launcher import is_job_address
    from raymlops.loop.pipeline import train_and_register

    config = _load(config_path, overrides)
    if is_job_address(address):
        raise click.UsageError(
            f"--address {address} is a job API: use `raymlops submit train --address {address}`"
        )
    result = train_and_register(
        config, address=address, resume=resume, home=home, gate_first_version=True
    )
    if as_json:
        _json_out(_train_dict(result))
    else:
        click.echo(result.summary())
    _exit_if_first_gate_failed(result)


# --------------------------------------------------------------------------- Ray jobs


def _job_address_option(func: F) -> F:
    return click.option(
        "--address",
        envvar="RAY_API_SERVER_ADDRESS",
        default="http://127.0.0.1:8265",
        show_default=True,
        help="The cluster's job API (a local head, or `ray dashboard cluster.yaml`'s tunnel).",
    )(func)


def _step_args(step: str, step_args: tuple[str, ...]) -> list[str]:
    """A step's own arguments for its job; for batch, --input/--output are required and
    local paths made absolute (the job runs in a copy of the working dir, where a relative
    output would be lost)."""
    args = list(step_args)
    if step != "batch":
        return args
    for i, arg in enumerate(args):
        for name in ("--input", "--output"):
            if arg == name and i + 1 < len(args) and "://" not in args[i + 1]:
                args[i + 1] = str(Path(args[i + 1]).expanduser().resolve())
            elif arg.startswith(name + "=") and "://" not in arg:
                args[i] = f"{name}={Path(arg.split('=', 1)[1]).expanduser().resolve()}"
    for name in ("--input", "--output"):
        if not any(a == name or a.startswith(name + "=") for a in args):
            raise click.UsageError(
                f"submit batch needs {name} after `--`, e.g. "
                "raymlops submit batch -- --input data/ --output preds/"
            )
    return args


def _option_value(args: list[str], name: str) -> str | None:
    """The value of `name VALUE` or `name=VALUE` in a step's arguments."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@cli.command()
@click.argument(
    "step",
    type=click.Choice(["train", "run", "batch", "monitor", "serve", "retrain", "watch"]),
)
@click.argument("step_args", nargs=-1, metavar="[-- STEP ARGS]")
@_config_options
@_home_option
@_job_address_option
@_retries_option
@_working_dir_option
@click.option("--resume", is_flag=True, help="train: continue the latest interrupted search.")
@click.option("--no-wait", is_flag=True, help="Print the submission id and return at once.")
@click.option(
    "--ship-raymlops/--no-ship-raymlops",
    default=True,
    show_default=True,
    help="Upload this raymlops package with the job (py_modules); off when the cluster's "
    "image has the same version installed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job's outcome as JSON.")
@_handle_errors
def submit(
    step: str,
    step_args: tuple[str, ...],
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str,
    max_retries: int,
    working_dir: str,
    resume: bool,
    no_wait: bool,
    ship_raymlops: bool,
    as_json: bool,
) -> None:
    """Run a step as a Ray job on a cluster, streaming its logs; the exit code is the job's.

    \b
    Example:
      raymlops submit train -c examples/synthetic.yaml --address http://127.0.0.1:8265
      raymlops submit train --no-wait && raymlops jobs list
      raymlops submit batch -- --input s3://bucket/in/ --output s3://bucket/out/ --gpus 1
      raymlops submit retrain --set storage=s3://bucket/raymlops

    The step's own options follow `--` (batch: --input and --output, which must be paths
    or URIs the cluster can reach: object-store URIs on a cluster of other machines; local
    paths, made absolute, only when the cluster runs on this machine).
    """
    from raymlops.cluster.launcher import JobLauncher

    config = _load(config_path, overrides)  # a bad config fails here, not on the cluster
    args = _forward_args(config_path, overrides, working_dir)
    if resume:
        args.append("--resume")
    args += _step_args(step, step_args)
    launcher = JobLauncher(address, home)
    if step == "batch":  # its data must be where every node reads: not this laptop's disk
        launcher.check_storage(
            {name: _option_value(args, name) for name in ("--input", "--output")}
        )
    outcome = launcher.submit(
        step,
        args,
        working_dir=working_dir,
        wait=not no_wait,
        max_retries=max_retries,
        ship_raymlops=ship_raymlops,
        config=config,
    )
    if as_json:
        error = None if no_wait else _report_jobs([outcome], as_json=True)
        _json_out(_outcome_dict(outcome))
        _exit_if_failed(error)
        return
    if no_wait:
        click.echo(outcome.submission_id)
        return
    _exit_if_failed(_report_jobs([outcome]))


@cli.group()
def jobs() -> None:
    """Ray jobs on a cluster: list, logs, stop.

    \b
    Example:
      raymlops jobs list --address http://127.0.0.1:8265
    """


@jobs.command("list")
@_job_address_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def jobs_list(address: str, as_json: bool) -> None:
    """List the cluster's jobs, newest first.

    \b
    Example:
      raymlops jobs list
    """
    from raymlops.cluster.launcher import JobLauncher

    rows = JobLauncher(address).list_jobs()
    if as_json:
        _json_out(rows)
        return
    click.echo(f"{'SUBMISSION ID':<32} {'STATUS':<10} {'STEP':<8} STARTED")
    for row in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["start_time"]))
        click.echo(f"{row['submission_id']!s:<32} {row['status']:<10} {row['step']:<8} {started}")


@jobs.command("logs")
@click.argument("submission_id")
@_job_address_option
@_handle_errors
def jobs_logs(submission_id: str, address: str) -> None:
    """Print a job's log.

    \b
    Example:
      raymlops jobs logs raymlops-train-0123456789
    """
    from raymlops.cluster.launcher import JobLauncher

    click.echo(JobLauncher(address).logs(submission_id), nl=False)


@jobs.command("stop")
@click.argument("submission_id")
@_job_address_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def jobs_stop(submission_id: str, address: str, as_json: bool) -> None:
    """Stop a running job.

    \b
    Example:
      raymlops jobs stop raymlops-train-0123456789
    """
    from raymlops.cluster.launcher import JobLauncher

    stopped = JobLauncher(address).stop(submission_id)
    if as_json:
        _json_out({"submission_id": submission_id, "stop_requested": stopped})
        return
    click.echo(f"{submission_id}: {'stop requested' if stopped else 'already ended'}")

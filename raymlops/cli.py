"""`raymlops …`: a thin shell over the public API; no logic of its own.

Every command exits 0 on success, 2 on bad input (config, data, arguments) and 1 when the
work itself fails, printing one clear line instead of a traceback (RAYMLOPS_DEBUG=1 shows it).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import click

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _handle_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from raymlops.errors import RaymlopsError

        try:
            return func(*args, **kwargs)
        except RaymlopsError as exc:
            if os.environ.get("RAYMLOPS_DEBUG"):
                traceback.print_exc()
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:  # the last line of defence: one line, not a traceback
            if os.environ.get("RAYMLOPS_DEBUG"):
                traceback.print_exc()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _fail(f"{type(exc).__name__}: {detail} (set RAYMLOPS_DEBUG=1 for the traceback)", 1)

    return wrapper  # type: ignore[return-value]


def _config_options(func: F) -> F:
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set train.epochs=5 (repeatable).",
    )(func)
    func = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Pipeline YAML; default: the embedded breast-cancer example.",
    )(func)
    return func


def _home_option(func: F) -> F:
    return click.option(
        "--home",
        envvar="RAYMLOPS_HOME",
        default=None,
        help="State folder of the embedded default (MLflow store, Tune runs); "
        "default $RAYMLOPS_HOME or ./.raymlops.",
    )(func)


def _load(config_path: str | None, overrides: tuple[str, ...]) -> Any:
    from raymlops.config import load_config

    return load_config(config_path, list(overrides))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="raymlops")
def cli() -> None:
    """raymlops — the ML lifecycle for PyTorch models on Ray.

    \b
    Example (embedded default: a bundled dataset, SQLite MLflow store, no server):
      raymlops run                    # train, register, make champion, sample predictions
      raymlops models list            # registered models, versions, aliases
      mlflow ui --backend-store-uri sqlite:///.raymlops/mlflow.db
    """


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


def _report_jobs(outcomes: list[Any]) -> None:
    for outcome in outcomes:
        click.echo(
            f"{outcome.step}: {outcome.status} (job {outcome.submission_id}, "
            f"attempt {outcome.attempts})"
        )
    failed = next((o for o in outcomes if not o.succeeded), None)
    if failed is not None:
        click.echo(f"--- last lines of {failed.submission_id} ---\n{failed.log_tail}", err=True)
        _fail(f"step {failed.step} {failed.status.lower()} as Ray job {failed.submission_id}", 1)


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
@_retries_option
@_working_dir_option
@_handle_errors
def run(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    samples: int,
    max_retries: int,
    working_dir: str,
) -> None:
    """Run the whole pipeline: train → register → champion → sample predictions.

    \b
    Example:
      raymlops run
      raymlops run -c examples/synthetic.yaml --set tune.num_samples=4
      raymlops run --address http://127.0.0.1:8265    # each step as a Ray job
    """
    from raymlops.launcher import is_job_address, run_pipeline_as_jobs
    from raymlops.pipeline import run_pipeline

    config = _load(config_path, overrides)
    if is_job_address(address):
        assert address is not None
        args = _forward_args(config_path, overrides, working_dir)
        outcomes = run_pipeline_as_jobs(
            address,
            args,
            home=home,
            working_dir=working_dir,
            max_retries=max_retries,
            tracking_uri=config.registry.tracking_uri,
        )
        _report_jobs(outcomes)
        click.echo(f"registered as {config.registry.model_name}: raymlops models list")
        return
    result = run_pipeline(config, address=address, home=home, samples=samples)
    click.echo(result.train.summary())
    click.echo(
        f"\nsample predictions from {config.registry.model_name} v{result.champion} "
        "(champion, loaded from the registry):"
    )
    click.echo(result.sample_predictions.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    click.echo(f"\nbrowse runs: mlflow ui --backend-store-uri {result.train.tracking_uri}")


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

    \b
    Example:
      raymlops train --set tune.num_samples=16 --set tune.scheduler=fifo
      raymlops train --resume          # after a crash or Ctrl-C
    """
    from raymlops.launcher import is_job_address
    from raymlops.pipeline import train_and_register

    config = _load(config_path, overrides)
    if is_job_address(address):
        raise click.UsageError(
            f"--address {address} is a job API: use `raymlops submit train --address {address}`"
        )
    result = train_and_register(config, address=address, resume=resume, home=home)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": result.model_name,
                    "version": result.version.version,
                    "aliases": result.version.aliases,
                    "run_id": result.run_id,
                    "best_params": result.best_params,
                    "test_metrics": result.test_metrics,
                    "trials": result.trials,
                    "failed_trials": result.failed_trials,
                    "dataset_digest": result.dataset.digest,
                },
                indent=2,
            )
        )
    else:
        click.echo(result.summary())


# --------------------------------------------------------------------------- Ray jobs


def _job_address_option(func: F) -> F:
    return click.option(
        "--address",
        envvar="RAY_API_SERVER_ADDRESS",
        default="http://127.0.0.1:8265",
        show_default=True,
        help="The cluster's job API (a local head, or `ray dashboard cluster.yaml`'s tunnel).",
    )(func)


@cli.command()
@click.argument("step", type=click.Choice(["train", "run"]))
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
@_handle_errors
def submit(
    step: str,
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str,
    max_retries: int,
    working_dir: str,
    resume: bool,
    no_wait: bool,
    ship_raymlops: bool,
) -> None:
    """Run a step as a Ray job on a cluster, streaming its logs; the exit code is the job's.

    \b
    Example:
      raymlops submit train -c examples/synthetic.yaml --address http://127.0.0.1:8265
      raymlops submit train --no-wait && raymlops jobs list
    """
    from raymlops.launcher import JobLauncher

    config = _load(config_path, overrides)  # a bad config fails here, not on the cluster
    args = _forward_args(config_path, overrides, working_dir)
    if resume:
        args.append("--resume")
    launcher = JobLauncher(address, home)
    outcome = launcher.submit(
        step,
        args,
        working_dir=working_dir,
        wait=not no_wait,
        max_retries=max_retries,
        ship_raymlops=ship_raymlops,
        tracking_uri=config.registry.tracking_uri,
    )
    if no_wait:
        click.echo(outcome.submission_id)
        return
    _report_jobs([outcome])


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
    from raymlops.launcher import JobLauncher

    rows = JobLauncher(address).list_jobs()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
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
    from raymlops.launcher import JobLauncher

    click.echo(JobLauncher(address).logs(submission_id), nl=False)


@jobs.command("stop")
@click.argument("submission_id")
@_job_address_option
@_handle_errors
def jobs_stop(submission_id: str, address: str) -> None:
    """Stop a running job.

    \b
    Example:
      raymlops jobs stop raymlops-train-0123456789
    """
    from raymlops.launcher import JobLauncher

    stopped = JobLauncher(address).stop(submission_id)
    click.echo(f"{submission_id}: {'stop requested' if stopped else 'already ended'}")


# --------------------------------------------------------------------------- config


@cli.group()
def config() -> None:
    """Show or validate pipeline configs.

    \b
    Example:
      raymlops config show -c examples/synthetic.yaml --set train.epochs=5
    """


@config.command("show")
@_config_options
@_handle_errors
def config_show(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the effective config (defaults filled in) as YAML.

    \b
    Example:
      raymlops config show --set tune.num_samples=32
    """
    from raymlops.config import config_to_yaml

    click.echo(config_to_yaml(_load(config_path, overrides)), nl=False)


@config.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value.")
@_handle_errors
def config_validate(file: str, overrides: tuple[str, ...]) -> None:
    """Check a config file; exit 2 with the offending key on error.

    \b
    Example:
      raymlops config validate examples/breast_cancer.yaml
    """
    cfg = _load(file, overrides)
    click.echo(f"{file}: valid (pipeline '{cfg.name}', model '{cfg.registry.model_name}')")


# --------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Synthesise and profile datasets.

    \b
    Example:
      raymlops data synth --rows 10000 --features 8 --out data/synth.parquet
    """


@data.command("synth")
@click.option("--rows", type=click.IntRange(min=1), required=True, help="Number of rows.")
@click.option(
    "--features",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Numeric features f0…",
)
@click.option(
    "--categorical",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Categorical features c0… (8 levels each).",
)
@click.option(
    "--task",
    type=click.Choice(["classification", "regression"]),
    default="classification",
    show_default=True,
)
@click.option(
    "--drift",
    type=float,
    default=0.0,
    show_default=True,
    help="Covariate shift: numeric means move by DRIFT std; categorical mass "
    "shifts to rare levels. The feature→label relation is unchanged.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of data and concept.")
@click.option(
    "--out",
    required=True,
    help="*.parquet or *.csv for one file, anything else for a folder of parts.",
)
@_handle_errors
def data_synth(
    rows: int, features: int, categorical: int, task: str, drift: float, seed: int, out: str
) -> None:
    """Write a seeded synthetic dataset with a known feature→label relation.

    \b
    Example:
      raymlops data synth --rows 5000000 --features 64 --categorical 4 --out data/synth
      raymlops data synth --rows 10000 --features 8 --drift 0.5 --out drifted.parquet
    """
    from raymlops.data import synth_dataset

    with click.progressbar(length=rows, label="writing rows", file=sys.stderr) as bar:
        path = synth_dataset(
            out,
            rows,
            features,
            categorical,
            cast(Literal["classification", "regression"], task),
            drift,
            seed,
            progress=bar.update,
        )
    click.echo(f"wrote {rows} rows × {features} numeric + {categorical} categorical → {path}")


@data.command("profile")
@click.argument("path")
@click.option("--label", default=None, help="Label column (default: the last column).")
@click.option("--json", "as_json", is_flag=True, help="Print the full profile as JSON.")
@_handle_errors
def data_profile(path: str, label: str | None, as_json: bool) -> None:
    """Print a dataset's digest, schema, row count and per-column profile.

    \b
    Example:
      raymlops data profile data/synth --label label
      raymlops data profile sklearn:breast_cancer --label target --json
    """
    from raymlops.data import describe_path

    version = describe_path(path, label)
    click.echo(json.dumps(version.to_dict(), indent=2) if as_json else version.summary())


# --------------------------------------------------------------------------- models


@cli.group()
def models() -> None:
    """Registered models, versions and aliases.

    \b
    Example:
      raymlops models list
    """


@models.command("list")
@_home_option
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: embedded).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def models_list(home: str | None, tracking_uri: str | None, as_json: bool) -> None:
    """List registered models with their version count and aliases.

    \b
    Example:
      raymlops models list --json
    """
    from raymlops.registry import Registry

    rows = Registry(tracking_uri, home).list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no registered models (train one with: raymlops train)")
        return
    click.echo(f"{'MODEL':<32} {'VERSIONS':>8} {'LATEST':>6}  ALIASES")
    for row in rows:
        aliases = ", ".join(f"{k}→v{v}" for k, v in sorted(row["aliases"].items())) or "-"
        click.echo(
            f"{row['name']:<32} {row['versions']:>8} {row['latest_version']!s:>6}  {aliases}"
        )


@models.command("show")
@click.argument("name")
@click.option("--version", "version", default=None, help="Version number or alias.")
@_home_option
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: embedded).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def models_show(
    name: str, version: str | None, home: str | None, tracking_uri: str | None, as_json: bool
) -> None:
    """Show a model's versions, or one version's metrics, lineage and environment.

    \b
    Example:
      raymlops models show breast-cancer
      raymlops models show breast-cancer --version champion --json
    """
    from raymlops.registry import Registry

    registry = Registry(tracking_uri, home)
    if version is None:
        versions = registry.list_versions(name)
        if as_json:
            click.echo(json.dumps([v.to_dict() for v in versions], indent=2))
            return
        click.echo(f"{name}: {len(versions)} version(s)")
        click.echo(f"{'VERSION':>7}  {'CREATED':<20} {'ALIASES':<22} METRICS")
        for v in versions:
            d = v.to_dict()
            shown = {k: val for k, val in d["metrics"].items() if k.startswith("test_")}
            metrics = "  ".join(f"{k}={val:.4f}" for k, val in list(shown.items())[:4])
            click.echo(
                f"{v.version:>7}  {d['created']:<20} {', '.join(v.aliases) or '-':<22} {metrics}"
            )
        return
    info = registry.version_info(name, version).to_dict()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{name} v{info['version']}  aliases: {', '.join(info['aliases']) or '-'}")
    for key in ("created", "run_id", "dataset_digest", "config_hash", "trial_id"):
        click.echo(f"  {key:<15} {info[key]}")
    click.echo("  metrics:")
    for key, val in info["metrics"].items():
        click.echo(f"    {key:<22} {val:.4f}")
    env = {k.split(".")[-1]: v for k, v in info["tags"].items() if k.startswith("raymlops.env.")}
    click.echo("  environment:   " + ", ".join(f"{k} {v}" for k, v in env.items()))


# --------------------------------------------------------------------------- predict


@cli.command()
@click.argument("name")
@click.option(
    "--version", "version", default="champion", show_default=True, help="Version number or alias."
)
@click.option("--input", "input_path", required=True, help="Parquet/CSV file or folder.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Rows to predict."
)
@_home_option
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: embedded).")
@_handle_errors
def predict(
    name: str,
    version: str,
    input_path: str,
    limit: int,
    home: str | None,
    tracking_uri: str | None,
) -> None:
    """Predict a few rows of a file with a registered model (verified before load).

    \b
    Example:
      raymlops predict breast-cancer --input data.parquet --limit 5
    """
    from raymlops.data import load_table
    from raymlops.registry import Registry

    predictor = Registry(tracking_uri, home).load_predictor(name, version)
    rows = load_table(input_path).slice(0, limit)
    frame = predictor.predict(rows).to_frame()
    click.echo(f"{name} v{predictor.metadata['version']}:")
    click.echo(frame.to_string(float_format=lambda v: f"{v:.4f}"))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="raymlops")


if __name__ == "__main__":
    main()

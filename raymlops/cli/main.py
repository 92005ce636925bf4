"""`raymlops …`: a thin shell over the public API; no logic of its own.

Every command exits 0 on success, 2 on bad input (config, data, arguments) and 1 when the
work itself fails, printing one clear line instead of a traceback (RAYMLOPS_DEBUG=1 shows it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import click

from raymlops.cluster.launcher import PIPELINE_STEPS

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _handle_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from raymlops.core.errors import RaymlopsError

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
            _fail(f"{_one_line(exc)} (set RAYMLOPS_DEBUG=1 for the traceback)", 1)

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """`Type: message` of an unexpected error on one line. An error raised inside a Ray
    task or actor names only the task on its first line; what went wrong is the error it
    wraps (`cause`), shown whole (its lines joined: a crashed HAProxy's alert is on its
    last one), with the task it came from."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        origin = re.sub(r"\x1b\[[0-9;]*m", "", first).split(" (pid=")[0]  # no colours
        text = " | ".join(line.strip() for line in str(cause).splitlines() if line.strip())
        if len(text) > limit:
            text = text[:limit] + "…"
        return f"{type(cause).__name__}" + (f" in {origin}" if origin else "") + f": {text}"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {detail}"


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
    from raymlops.core.config import load_config

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
@click.option(
    "--train-only",
    is_flag=True,
    help="Only train → register → champion → sample predictions (no serving, batch, "
    "monitoring or retraining).",
)
@click.option(
    "--keep-serving",
    is_flag=True,
    help="Leave the endpoint up at the end, serving in the foreground until Ctrl-C.",
)
@_retries_option
@_working_dir_option
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
    --home, which the cluster's nodes must see (on a remote cluster: shared storage, and
    MLFLOW_TRACKING_URI set to the cluster's MLflow server).
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
        _report_jobs(outcomes)
        from raymlops.registry.store import Registry

        champion = Registry.from_config(config, home).alias_target(
            config.registry.model_name, "champion"
        )
        click.echo(f"champion now: {config.registry.model_name} v{champion}")
        return
    result = run_pipeline(
        config,
        address=address,
        home=home,
        samples=samples,
        full=not train_only,
        keep_serving=keep_serving,
    )
    if not train_only:
        click.echo(result.summary())
        return
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
    from raymlops.cluster.launcher import is_job_address
    from raymlops.loop.pipeline import train_and_register

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


@cli.command()
@click.argument("step", type=click.Choice(["train", "run", "batch", "monitor", "serve"]))
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
) -> None:
    """Run a step as a Ray job on a cluster, streaming its logs; the exit code is the job's.

    \b
    Example:
      raymlops submit train -c examples/synthetic.yaml --address http://127.0.0.1:8265
      raymlops submit train --no-wait && raymlops jobs list
      raymlops submit batch -- --input s3://bucket/in/ --output s3://bucket/out/ --gpus 1

    The step's own options follow `--` (batch: --input and --output, which must be paths
    or URIs the cluster can reach; local paths are made absolute).
    """
    from raymlops.cluster.launcher import JobLauncher

    config = _load(config_path, overrides)  # a bad config fails here, not on the cluster
    args = _forward_args(config_path, overrides, working_dir)
    if resume:
        args.append("--resume")
    args += _step_args(step, step_args)
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
    from raymlops.cluster.launcher import JobLauncher

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
    from raymlops.cluster.launcher import JobLauncher

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
    from raymlops.cluster.launcher import JobLauncher

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
    from raymlops.core.config import config_to_yaml

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
    from raymlops.data.dataset import synth_dataset

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
    from raymlops.data.dataset import describe_path

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
    from raymlops.registry.store import Registry

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
    from raymlops.registry.store import Registry

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


# --------------------------------------------------------------------------- gate / promotion


def _tracking_option(func: F) -> F:
    return click.option(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: embedded)."
    )(func)


def _policy_options(func: F) -> F:
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a value of that config, e.g. --set gate.latency.p95_ms=20 (repeatable).",
    )(func)
    func = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Config whose gate/promotion sections apply; default: the config the version "
        "was trained with (recorded with it).",
    )(func)
    return func


def _governed(
    name: str,
    version: str,
    config_path: str | None,
    overrides: tuple[str, ...],
    tracking_uri: str | None,
    home: str | None,
) -> tuple[Any, Any]:
    """The registry and the policy config: -c FILE, else the version's recorded config
    (with --set applied to it), else None (the recorded config, read by the callee)."""
    from raymlops.registry.store import Registry

    if config_path is not None:
        config = _load(config_path, overrides)
        return Registry(tracking_uri or config.registry.tracking_uri, home), config
    registry = Registry(tracking_uri, home)
    if not overrides:
        return registry, None
    from pydantic import ValidationError

    from raymlops.core.config import PipelineConfig, apply_overrides
    from raymlops.core.errors import ConfigError
    from raymlops.loop.gate import recorded_config

    recorded = recorded_config(registry, name, version).model_dump(mode="json")
    try:
        return registry, PipelineConfig.model_validate(apply_overrides(recorded, list(overrides)))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(
            f"invalid --set for {name} v{version}'s config: {where}: {message}"
        ) from None


def _version_arg(version: str) -> int | str:
    return int(version) if version.isdigit() else version


@cli.command()
@click.argument("name")
@click.argument("version")
@_policy_options
@click.option(
    "--data",
    "data_path",
    default=None,
    help="Held-out rows (Parquet/CSV file or folder with the label column) instead of the "
    "version's re-created test split.",
)
@click.option("--by", default=None, help="Who runs the gate (default $RAYMLOPS_USER or login).")
@click.option("--no-record", is_flag=True, help="Only evaluate: log, tag and record nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@_home_option
@_tracking_option
@_handle_errors
def gate(
    name: str,
    version: str,
    config_path: str | None,
    overrides: tuple[str, ...],
    data_path: str | None,
    by: str | None,
    no_record: bool,
    as_json: bool,
    home: str | None,
    tracking_uri: str | None,
) -> None:
    """Gate a version on held-out rows: thresholds, champion, behaviour, fairness, latency.

    Exit 0 when every check passes, 1 when one fails, 2 on bad input. The result is logged
    to MLflow and attached to the version (`raymlops promote` requires a pass).

    \b
    Example:
      raymlops gate breast-cancer 2
      raymlops gate breast-cancer 2 -c examples/ci/pipeline.yaml --json
      raymlops gate synthetic challenger --data data/holdout.parquet
    """
    from raymlops.loop.gate import run_gate

    registry, config = _governed(name, version, config_path, overrides, tracking_uri, home)
    result = run_gate(
        registry,
        config,
        name,
        _version_arg(version),
        data_path,
        record=not no_record,
        by=by,
        echo=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else result.table())
    if not result.passed:
        failed = result.failed_checks
        _fail(
            f"gate failed: {len(failed)} of {len(result.checks)} checks failed ("
            + ", ".join(f"{c.kind} {c.name}" for c in failed[:3])
            + (", …" if len(failed) > 3 else "")
            + ")",
            1,
        )


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option("--reason", required=True, help="Why (recorded in the history).")
@click.option("--alias", default="champion", show_default=True, help="Alias to move.")
@click.option("--by", default=None, help="Who promotes (default $RAYMLOPS_USER or login).")
@click.option(
    "--force",
    is_flag=True,
    help="Promote even without a passed gate or approvals (recorded as forced).",
)
@_policy_options
@click.option("--json", "as_json", is_flag=True, help="Print the recorded event as JSON.")
@_home_option
@_tracking_option
@_handle_errors
def promote(
    name: str,
    version: str,
    reason: str,
    alias: str,
    by: str | None,
    force: bool,
    config_path: str | None,
    overrides: tuple[str, ...],
    as_json: bool,
    home: str | None,
    tracking_uri: str | None,
) -> None:
    """Point an alias (champion) at a version that passed the gate; exit 1 if refused.

    Refused unless the version's latest gate passed against the current champion and, with
    `promotion: manual`, it has been approved (`raymlops approve`); --force overrides and is
    recorded as forced. Serving follows the champion alias, so this is a deployment.

    \b
    Example:
      raymlops promote breast-cancer 2 --reason "better recall on the Q3 data" --by alice
      raymlops promote breast-cancer 3 --reason "hotfix" --force
    """
    from raymlops.loop import governance

    if not version.isdigit():
        raise click.BadParameter("give a version number", param_hint="VERSION")
    registry, config = _governed(name, version, config_path, overrides, tracking_uri, home)
    if registry.version_info(name, int(version)).version == registry.alias_target(name, alias):
        # Idempotent for pipelines: a first version is champion from registration on.
        click.echo(f"{alias} of {name} already points to v{version}; nothing to do")
        return
    event = governance.promote(
        registry, name, int(version), reason=reason, by=by, alias=alias, force=force, config=config
    )
    if as_json:
        click.echo(json.dumps(event.to_dict(), indent=2))
        return
    was = f"v{event.from_version}" if event.from_version is not None else "nothing"
    click.echo(f"{alias} of {name}: {was} → v{event.to_version} (promoted by {event.by})")
    if event.details.get("forced"):
        click.echo("FORCED past: " + "; ".join(event.details.get("force_overrode", [])))


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option("--by", required=True, help="Who approves.")
@click.option("--reason", default="", help="Why (recorded in the history).")
@click.option("--alias", default="champion", show_default=True, help="Alias the approval is for.")
@_home_option
@_tracking_option
@_handle_errors
def approve(
    name: str,
    version: str,
    by: str,
    reason: str,
    alias: str,
    home: str | None,
    tracking_uri: str | None,
) -> None:
    """Approve a gated version for promotion (needed when `promotion: manual`).

    \b
    Example:
      raymlops approve breast-cancer 2 --by carol --reason "reviewed the model card"
    """
    from raymlops.loop import governance
    from raymlops.registry.store import Registry

    if not version.isdigit():
        raise click.BadParameter("give a version number", param_hint="VERSION")
    registry = Registry(tracking_uri, home)
    event = governance.approve(registry, name, int(version), by=by, reason=reason, alias=alias)
    approvers = governance.approvals_for(registry.alias_history(name), int(version), alias)
    click.echo(
        f"{name} v{event.to_version} approved for {alias} by {event.by} "
        f"({len(approvers)} approval(s) since its latest gate: {', '.join(approvers)})"
    )


@cli.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded in the history).")
@click.option("--alias", default="champion", show_default=True, help="Alias to roll back.")
@click.option("--by", default=None, help="Who rolls back (default $RAYMLOPS_USER or login).")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded event as JSON.")
@_home_option
@_tracking_option
@_handle_errors
def rollback(
    name: str,
    reason: str,
    alias: str,
    by: str | None,
    as_json: bool,
    home: str | None,
    tracking_uri: str | None,
) -> None:
    """Return an alias (champion) to the version it pointed to before, from the history.

    \b
    Example:
      raymlops rollback breast-cancer --reason "error rate up after v3"
    """
    from raymlops.loop import governance
    from raymlops.registry.store import Registry

    event = governance.rollback(
        Registry(tracking_uri, home), name, reason=reason, by=by, alias=alias
    )
    if as_json:
        click.echo(json.dumps(event.to_dict(), indent=2))
        return
    click.echo(
        f"{alias} of {name}: v{event.from_version} → v{event.to_version} "
        f"(rolled back by {event.by})"
    )


@models.command("history")
@click.argument("name")
@click.option("--alias", default=None, help="Only this alias's events.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per event).")
@_home_option
@_tracking_option
@_handle_errors
def models_history(
    name: str, alias: str | None, as_json: bool, home: str | None, tracking_uri: str | None
) -> None:
    """Every alias change and lifecycle decision of a model: when, who, from→to, why, gate.

    Append-only (runs of the MLflow experiment raymlops-audit), in the order they happened;
    includes approvals, gate results and automatic rollbacks from serving.

    \b
    Example:
      raymlops models history breast-cancer
      raymlops models history breast-cancer --alias champion --json
    """
    from raymlops.loop import governance
    from raymlops.registry.store import Registry

    events = governance.model_history(Registry(tracking_uri, home), name, alias)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in events], indent=2))
        return
    if not events:
        click.echo(f"{name}: no alias changes recorded")
        return
    click.echo(
        f"{'#':>4}  {'TIME (UTC)':<19}  {'ALIAS':<11} {'ACTION':<16} {'FROM → TO':<11} "
        f"{'BY':<12} {'GATE':<7} REASON"
    )
    for e in events:
        action = e.action + (" (forced)" if e.details.get("forced") else "")
        moved = (
            f"{'v' + str(e.from_version) if e.from_version is not None else '-'} → "
            f"{'v' + str(e.to_version) if e.to_version is not None else '-'}"
        )
        gate_status = e.details.get("gate") or e.details.get("status") or "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.timestamp))
        click.echo(
            f"{e.sequence:>4}  {when:<19}  {e.alias:<11} {action:<16} {moved:<11} "
            f"{e.by:<12.12} {gate_status!s:<7.7} {e.reason}"
        )


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "html"]),
    default="md",
    show_default=True,
    help="Markdown or a self-contained HTML page.",
)
@click.option("--out", "out", default=None, help="Write to this file instead of stdout.")
@_home_option
@_tracking_option
@_handle_errors
def card(
    name: str, version: str, fmt: str, out: str | None, home: str | None, tracking_uri: str | None
) -> None:
    """Print or write a version's model card (use, data, search, metrics, gate, history).

    \b
    Example:
      raymlops card breast-cancer champion
      raymlops card breast-cancer 2 --format html --out card.html
    """
    from raymlops.loop.cards import render_card
    from raymlops.registry.store import Registry

    text = render_card(
        Registry(tracking_uri, home),
        name,
        _version_arg(version),
        cast(Literal["md", "html"], fmt),
    )
    if out is None:
        click.echo(text, nl=False)
        return
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    click.echo(f"wrote {target}")


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
    from raymlops.core.errors import DataError
    from raymlops.data.dataset import iter_tables
    from raymlops.registry.store import Registry

    predictor = Registry(tracking_uri, home).load_predictor(name, version)
    # The first rows only: the input may be a folder larger than memory.
    rows = next((t for t in iter_tables(input_path) if t.num_rows), None)
    if rows is None:
        raise DataError(f"{input_path} has no rows")
    rows = rows.slice(0, limit)
    frame = predictor.predict(rows).to_frame()
    click.echo(f"{name} v{predictor.metadata['version']}:")
    click.echo(frame.to_string(float_format=lambda v: f"{v:.4f}"))


# --------------------------------------------------------------------------- batch


@cli.command()
@_config_options
@_home_option
@click.option(
    "--input", "input_path", required=True, help="Parquet/CSV file, folder or URI (s3://…)."
)
@click.option(
    "--output", "output_path", required=True, help="Folder or URI that receives the predictions."
)
@click.option(
    "--version", "version", default=None, help="Version number or alias (default: champion)."
)
@click.option(
    "--gpus",
    type=click.FloatRange(min=0),
    default=None,
    help="GPUs per actor (0.5 shares a GPU between two actors); default batch.gpus_per_actor.",
)
@click.option(
    "--on-bad-rows",
    type=click.Choice(["fail", "skip"]),
    default=None,
    help="A non-numeric value in a numeric feature: fail (exit 2, default "
    "batch.on_bad_rows) or skip the row into OUTPUT/_rejects/ with its reason.",
)
@click.option("--address", default=None, help="Ray cluster to join, e.g. ray://head:10001 or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def batch(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    input_path: str,
    output_path: str,
    version: str | None,
    gpus: float | None,
    on_bad_rows: str | None,
    address: str | None,
    as_json: bool,
) -> None:
    """Predict every row of Parquet/CSV input with a registered model on Ray Data.

    Output: one Parquet file per work unit (pass-through ids, prediction, proba_<class>,
    model name and version), written exactly once; run the same command again after a
    crash to finish the rest, or on a finished output to be told it is complete.

    \b
    Example:
      raymlops batch --input data/ --output preds/      # champion of the configured model
      raymlops batch -c my.yaml --input s3://bucket/in/ --output s3://bucket/out/ \\
          --version 4 --gpus 1 --on-bad-rows skip
    """
    from raymlops.batch.run import run_batch
    from raymlops.cluster.launcher import is_job_address

    config = _load(config_path, overrides)
    if is_job_address(address):
        raise click.UsageError(
            f"--address {address} is a job API: use `raymlops submit batch --address {address} "
            "-- --input … --output …`"
        )
    ref: str | int | None = int(version) if version is not None and version.isdigit() else version
    # Ray prints its notices (a worker that died, …) on stdout; they belong with the
    # progress on stderr, so that stdout holds the summary or the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_batch(
            config,
            input_path,
            output_path,
            version=ref,
            gpus=gpus,
            on_bad_rows=on_bad_rows,
            address=address,
            home=home,
        )
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
    global _exit_fast
    _exit_fast = True


# --------------------------------------------------------------------------- monitor


@cli.command()
@_config_options
@_home_option
@click.option(
    "--since",
    default=None,
    help="Only rows at or after: a duration back from now (2h, 1d) or an ISO date/time "
    "(UTC); default monitor.since (the whole log).",
)
@click.option(
    "--source",
    default=None,
    help="'prediction-log' (the model's log) or a Parquet/CSV file, folder or URI; "
    "default monitor.source.",
)
@click.option(
    "--version", "version", default=None, help="Version number or alias (default: champion)."
)
@click.option(
    "--labels",
    default=None,
    help="Parquet/CSV with request_id and the label: performance per time window.",
)
@click.option(
    "--report",
    default=None,
    help="Where the HTML report goes (the JSON result beside it); default "
    "<home>/reports/<model>/monitor-v<N>-<time>.html.",
)
@click.option(
    "--fail-on-drift",
    is_flag=True,
    help="Exit 1 when the dataset drifts (for CI and schedulers); default exit 0 either way.",
)
@click.option("--no-mlflow", is_flag=True, help="Do not record the run in MLflow.")
@click.option("--address", default=None, help="Ray cluster to join, e.g. ray://head:10001 or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result instead of a table.")
@_handle_errors
def monitor(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    since: str | None,
    source: str | None,
    version: str | None,
    labels: str | None,
    report: str | None,
    fail_on_drift: bool,
    no_mlflow: bool,
    address: str | None,
    as_json: bool,
) -> None:
    """Compare recent traffic with the training profile: drift, KPIs, an HTML report.

    Reads the prediction log (or any Parquet/CSV dataset) with Ray Data. Numeric features:
    Wasserstein distance / training std (drift at 0.1) on 1000+ rows, KS test (p < 0.05)
    below; categorical: Jensen–Shannon distance (0.1), chi-square below; no verdict under
    100 rows; the dataset drifts when half of its features do (all in the `monitor` section).
    Exit 0 whatever the verdict (1 on drift with --fail-on-drift), 2 on bad input.

    \b
    Example:
      raymlops monitor --since 1d
      raymlops monitor -c my.yaml --source traffic.parquet --version 3 --fail-on-drift
      raymlops monitor --since 2024-05-01 --labels labels.parquet --report drift.html --json
    """
    from raymlops.cluster.launcher import is_job_address
    from raymlops.monitor.run import run_monitor

    config = _load(config_path, overrides)
    if is_job_address(address):
        raise click.UsageError(
            f"--address {address} is a job API: use `raymlops submit monitor --address {address}`"
        )
    ref: str | int | None = int(version) if version is not None and version.isdigit() else version
    result = run_monitor(
        config,
        since=since,
        source=source,
        version=ref,
        labels=labels,
        report=report,
        home=home,
        address=address,
        log_to_mlflow=False if no_mlflow else None,
        echo=not as_json,
    )
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
    if fail_on_drift and result.drift_detected:
        drifted = ", ".join(result.dataset.drifted_features)
        _fail(f"drift detected in {result.model_name} v{result.version}: {drifted}", 1)


# --------------------------------------------------------------------------- serve


def _serve_target_options(func: F) -> F:
    func = click.option(
        "--app", default=None, help="Serve application name; default: serve.app_name or the model."
    )(func)
    func = click.option(
        "--address",
        default=None,
        help="Ray cluster that serves (ray://head:10001, auto, host:port); default: "
        "$RAY_ADDRESS, else the local head that `raymlops serve` started.",
    )(func)
    return _home_option(_config_options(func))


def _check_serve_address(address: str | None) -> None:
    from raymlops.cluster.launcher import is_job_address

    if is_job_address(address):
        raise click.UsageError(
            f"--address {address} is a job API: use `raymlops submit serve --address {address}`"
        )


def _print_serve_status(status: Any, as_json: bool) -> None:
    click.echo(json.dumps(status.to_dict(), indent=2, default=str) if as_json else status.summary())


@cli.group(invoke_without_command=True)
@_config_options
@_home_option
@click.option(
    "--address",
    default=None,
    help="Ray cluster to deploy on (ray://head:10001, auto, host:port); default: $RAY_ADDRESS, "
    "else a local Ray head that raymlops starts once in the background.",
)
@click.option(
    "--version", "version", default=None, help="Version number or alias; default: the champion."
)
@click.option(
    "--blocking",
    is_flag=True,
    help="Run Ray inside this process and serve in the foreground until Ctrl-C or SIGTERM "
    "(containers); without it the endpoint keeps running after the command returns.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the deployed status as JSON.")
@click.pass_context
@_handle_errors
def serve(
    ctx: click.Context,
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    version: str | None,
    blocking: bool,
    as_json: bool,
) -> None:
    """Serve the champion over HTTP on Ray Serve (HAProxy ingress, batching, canary).

    Without a subcommand, deploys and prints the URL; the endpoint keeps running.

    \b
    Example:
      raymlops serve                                 # the embedded default's champion
      curl -X POST http://127.0.0.1:8000/predict -H 'content-type: application/json' \\
           -d '{"instances": [{"mean_radius": 14.1, "...": 0}]}'
      raymlops serve status
      raymlops serve canary --version 3 --percent 10
      raymlops serve promote      # or: raymlops serve rollback
      raymlops serve config > serve.yaml             # for `serve deploy` on a cluster
      raymlops serve stop
    """
    if ctx.invoked_subcommand is not None:
        return
    from raymlops.serve.api import serve_model

    _check_serve_address(address)
    config = _load(config_path, overrides)
    ref: int | str | None = _version_arg(version) if version is not None else None
    status = serve_model(config, version=ref, address=address, home=home, blocking=blocking)
    if blocking:
        return
    _print_serve_status(status, as_json)
    if not as_json:
        click.echo(
            f"\nPOST {status.url}/predict   docs: {status.url}/docs   stop: raymlops serve stop"
        )


@serve.command("status")
@_serve_target_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def serve_status(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
    as_json: bool,
) -> None:
    """Show the application, its replicas, the traffic split and per-version figures.

    \b
    Example:
      raymlops serve status --json
    """
    from raymlops.serve.api import serve_status as status_of

    _check_serve_address(address)
    status = status_of(_load(config_path, overrides), app=app, address=address, home=home)
    _print_serve_status(status, as_json)


@serve.command("canary")
@_serve_target_options
@click.option("--version", "version", required=True, type=int, help="Challenger version.")
@click.option(
    "--percent",
    type=click.FloatRange(0, 100),
    default=None,
    help="Share of requests the challenger answers; default serve.canary.percent.",
)
@click.option(
    "--shadow",
    "shadow",
    type=click.FloatRange(0, 100),
    default=None,
    help="Share of requests mirrored to the challenger (logged, never returned).",
)
@click.option("--reason", default="", help="Why (recorded in the alias history).")
@click.option("--by", default=None, help="Who (default $RAYMLOPS_USER or the login name).")
@_handle_errors
def serve_canary(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
    version: int,
    percent: float | None,
    shadow: float | None,
    reason: str,
    by: str | None,
) -> None:
    """Put a challenger version on a share of live traffic (rolled back automatically if
    its error rate or p95 latency is worse than the champion's by the configured margins).

    \b
    Example:
      raymlops serve canary --version 3 --percent 10
      raymlops serve canary --version 3 --percent 0 --shadow 50     # shadow only
    """
    from raymlops.serve.api import serve_canary as start_canary

    _check_serve_address(address)
    status = start_canary(
        _load(config_path, overrides),
        version,
        percent=percent,
        shadow_percent=shadow,
        reason=reason,
        by=by,
        app=app,
        address=address,
        home=home,
    )
    _print_serve_status(status, False)


@serve.command("promote")
@_serve_target_options
@click.option("--reason", default="", help="Why (recorded in the alias history).")
@click.option("--by", default=None, help="Who (default $RAYMLOPS_USER or the login name).")
@_handle_errors
def serve_promote(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
    reason: str,
    by: str | None,
) -> None:
    """Make the canary's challenger the champion: registry alias, then all traffic.

    \b
    Example:
      raymlops serve promote --reason "canary clean for 24 h"
    """
    from raymlops.serve.api import serve_promote as promote_canary

    _check_serve_address(address)
    status = promote_canary(
        _load(config_path, overrides), reason=reason, by=by, app=app, address=address, home=home
    )
    _print_serve_status(status, False)


@serve.command("rollback")
@_serve_target_options
@click.option("--reason", default="", help="Why (recorded in the alias history).")
@click.option("--by", default=None, help="Who (default $RAYMLOPS_USER or the login name).")
@_handle_errors
def serve_rollback(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
    reason: str,
    by: str | None,
) -> None:
    """Stop the canary; without one, return traffic and the champion alias to the previous
    champion.

    \b
    Example:
      raymlops serve rollback --reason "p95 too high"
    """
    from raymlops.serve.api import serve_rollback as rollback_serving

    _check_serve_address(address)
    status = rollback_serving(
        _load(config_path, overrides), reason=reason, by=by, app=app, address=address, home=home
    )
    _print_serve_status(status, False)


@serve.command("config")
@_config_options
@_home_option
@click.option("--version", "version", type=int, default=None, help="Pin a version.")
@_handle_errors
def serve_config(
    config_path: str | None, overrides: tuple[str, ...], home: str | None, version: int | None
) -> None:
    """Print a Ray Serve config (YAML) for `serve deploy` on a cluster.

    \b
    Example:
      raymlops serve config -c examples/synthetic.yaml > serve.yaml
      serve deploy serve.yaml --address http://127.0.0.1:8265
    """
    from raymlops.serve.api import serve_config_yaml

    click.echo(
        serve_config_yaml(config_path, list(overrides), version=version, home=home), nl=False
    )


@serve.command("stop")
@_serve_target_options
@_handle_errors
def serve_stop(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
) -> None:
    """Delete the application, and stop the local Ray head raymlops started for it (only
    that head, by its recorded processes) when nothing else is served there.

    \b
    Example:
      raymlops serve stop
    """
    from raymlops.serve.api import serve_stop as stop_serving

    _check_serve_address(address)
    stopped = stop_serving(_load(config_path, overrides), app=app, address=address, home=home)
    click.echo("stopped: " + ", ".join(stopped) if stopped else "nothing was running")


#: Set by a command that ends with every file closed and Ray stopped (batch): main() then
#: skips the interpreter's teardown, which takes 1-2 s once torch and MLflow are loaded.
_exit_fast = False


@cli.command()
@_config_options
@_home_option
@click.option("--force", is_flag=True, help="Retrain even when no trigger fires.")
@click.option(
    "--since",
    default=None,
    help="Monitor only traffic after this (2h, 1d, an ISO time); default monitor.since.",
)
@click.option(
    "--recent-data",
    default=None,
    help="Recent labelled rows added to the training set; default retrain.recent_data.",
)
@click.option(
    "--no-canary",
    is_flag=True,
    help="Skip the canary even when the model is being served (promote after the gate).",
)
@click.option("--address", default=None, help="Ray cluster to join, e.g. ray://head:10001 or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def retrain(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    force: bool,
    since: str | None,
    recent_data: str | None,
    no_canary: bool,
    address: str | None,
    as_json: bool,
) -> None:
    """Apply the retrain policy once: monitor, and on drift, decay or schedule train a
    candidate, gate it against the champion, canary it on the live endpoint (when one
    serves the model), then promote or roll back — every step in the alias history.

    Exit 0 when nothing was needed or the candidate was promoted (or awaits approval), 1
    when it was rejected by the gate or rolled back during its canary.

    \b
    Example:
      raymlops retrain                                # decide from the prediction log
      raymlops retrain --force --recent-data labelled.parquet
    """
    from raymlops.loop.retrain import ServingCanary, retrain_once

    config = _load(config_path, overrides)
    canary = None if no_canary else ServingCanary.if_serving(config, home=home, address=address)
    result = retrain_once(
        config,
        force=force,
        since=since,
        canary=canary,
        recent_data=recent_data,
        home=home,
        address=address,
        echo=not as_json,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        click.echo(result.summary())
    if result.outcome in ("rejected", "rolled-back"):
        sys.exit(1)


@cli.command()
@_config_options
@_home_option
@click.option(
    "--interval",
    default=None,
    help="Time between passes (30m, 1h…); default retrain.watch_interval.",
)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Stop after N passes.")
@click.option("--address", default=None, help="Ray cluster to join, e.g. ray://head:10001 or auto.")
@_handle_errors
def watch(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    interval: str | None,
    iterations: int | None,
    address: str | None,
) -> None:
    """Run monitor → retrain on an interval, as a long-running job (Ctrl-C stops).

    \b
    Example:
      raymlops watch --interval 1h
      ray job submit --working-dir . -- python jobs/lifecycle.py --interval 1h
    """
    from raymlops.loop.retrain import ServingCanary
    from raymlops.loop.retrain import watch as watch_loop

    config = _load(config_path, overrides)
    canary = ServingCanary.if_serving(config, home=home, address=address)
    try:
        results = watch_loop(
            config,
            interval=interval,
            iterations=iterations,
            canary=canary,
            home=home,
            address=address,
        )
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
        return
    for result in results:
        click.echo(result.summary())


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="raymlops")
    except SystemExit as exc:
        if _exit_fast and not exc.code:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise


if __name__ == "__main__":
    main()

"""`raymlops` commands: serve and its subcommands: the endpoint on Ray Serve."""

from __future__ import annotations

import json
from typing import Any

import click

from raymlops.cli.base import (
    F,
    _config_options,
    _handle_errors,
    _home_option,
    _json_out,
    _load,
    _load_for_model,
    _model_option,
    cli,
)

# --------------------------------------------------------------------------- serve


def _serve_target_options(func: F) -> F:
    func = click.option(
        "--app",
        default=None,
        help="Serve application name; default: serve.app_name or the model (status and stop "
        "without -c/--set: the raymlops applications running).",
    )(func)
    func = click.option(
        "--address",
        default=None,
        help="Ray cluster that serves (ray://head:10001, auto, host:port); default: "
        "$RAY_ADDRESS, else the local head that `raymlops serve` started.",
    )(func)
    return _home_option(_config_options(func))


_json_flag = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _check_serve_address(address: str | None) -> None:
    from raymlops.cluster.launcher import is_job_address

    if is_job_address(address):
        raise click.UsageError(
            f"--address {address} is a job API: use `raymlops submit serve --address {address}`"
        )


def _print_serve_status(status: Any, as_json: bool) -> None:
    if as_json:
        _json_out(status.to_dict())
    else:
        click.echo(status.summary())


def _endpoint_overrides(
    overrides: tuple[str, ...], host: str | None, port: int | None
) -> tuple[str, ...]:
    """--host and --port as the `--set serve.host=…`/`serve.port=…` they stand for (after
    the other --set items, so the flags win)."""
    if host is not None:
        overrides = (*overrides, f"serve.host={json.dumps(host)}")
    if port is not None:
        overrides = (*overrides, f"serve.port={port}")
    return overrides


def _challenger(
    config_path: str | None,
    overrides: tuple[str, ...],
    model: str | None,
    version: int | None,
    home: str | None,
) -> tuple[Any, int]:
    """The config and the canary's version number: --version, or -m's URI (an alias is
    looked up in the registry: the canary holds the version it points to now)."""
    config, ref = _load_for_model(
        config_path, overrides, model, None if version is None else str(version)
    )
    if ref is None:
        raise click.UsageError("name the challenger: --version N or -m models:/NAME/VERSION")
    if isinstance(ref, int):
        return config, ref
    from raymlops.registry.store import Registry

    info = Registry.from_config(config, home).version_info(config.registry.model_name, ref)
    return config, info.version


def _named_config(config_path: str | None, overrides: tuple[str, ...]) -> Any:
    """The config when -c or --set is given, else None: with neither, and no --app, `serve
    status` and `serve stop` act on the raymlops applications found running, whichever
    config deployed them, not on the embedded default's application name."""
    if config_path is None and not overrides:
        return None
    return _load(config_path, overrides)


@cli.group(invoke_without_command=True)
@_config_options
@_home_option
@click.option(
    "--address",
    default=None,
    help="Ray cluster to deploy on (ray://head:10001, auto, host:port); default: $RAY_ADDRESS, "
    "else a local Ray head that raymlops starts once in the background.",
)
@_model_option
@click.option(
    "--version", "version", default=None, help="Version number or alias; default: the champion."
)
@click.option(
    "--host",
    default=None,
    help="Interface the endpoint listens on (same as --set serve.host=…); default serve.host "
    "(127.0.0.1). Beyond loopback it needs a token or --insecure.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the endpoint (same as --set serve.port=…); default serve.port (8000).",
)
@click.option(
    "--blocking",
    is_flag=True,
    help="Run Ray inside this process and serve in the foreground until Ctrl-C or SIGTERM "
    "(containers); without it the endpoint keeps running after the command returns.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow serve.host beyond loopback without a token (anyone who reaches it can use it).",
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
    model: str | None,
    version: str | None,
    host: str | None,
    port: int | None,
    blocking: bool,
    insecure: bool,
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
      raymlops serve -m models:/breast-cancer/2 --port 8080   # after serve stop
      raymlops serve canary --version 3 --percent 10
      raymlops serve promote      # or: raymlops serve rollback
      raymlops serve config > serve.yaml             # for `serve deploy` on a cluster
      raymlops serve stop
    """
    if ctx.invoked_subcommand is not None:
        return
    from raymlops.serve.api import serve_model

    _check_serve_address(address)
    overrides = _endpoint_overrides(overrides, host, port)
    config, ref = _load_for_model(config_path, overrides, model, version)
    status = serve_model(
        config, version=ref, address=address, home=home, blocking=blocking, insecure=insecure
    )
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

    Per deployment: replicas by state, Serve's target replica count with the autoscaling
    bounds, and the requests ongoing at each running replica (its queue length) and in
    total, as the replicas report them now.

    Which application: --app, else the one -c/--set configure; with none of them, every
    raymlops application running (on --address/$RAY_ADDRESS, else on the local head this
    home started), whichever config deployed it. --json prints the status object, or a
    list of them when several applications run and none was named.

    \b
    Example:
      raymlops serve status --json
      raymlops serve status -c other.yaml          # the application other.yaml deploys
    """
    from raymlops.serve.api import serve_statuses

    _check_serve_address(address)
    config = _named_config(config_path, overrides)
    statuses = serve_statuses(config, app=app, address=address, home=home)
    if len(statuses) == 1:
        _print_serve_status(statuses[0], as_json)
    elif as_json:
        _json_out([s.to_dict() for s in statuses])
    else:
        click.echo("\n\n".join(s.summary() for s in statuses))


@serve.command("canary")
@_serve_target_options
@_model_option
@click.option(
    "--version", "version", type=int, default=None, help="Challenger version (or -m with a URI)."
)
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
@click.option(
    "--labels",
    default=None,
    help="Delayed labels (Parquet/CSV of request_id + the label, a file or URI that grows): "
    "serving also compares the challenger's quality with the champion's on the requests each "
    "served; default serve.canary.labels.",
)
@click.option("--reason", default="", help="Why (recorded in the alias history).")
@click.option("--by", default=None, help="Who (default $RAYMLOPS_USER or the login name).")
@_json_flag
@_handle_errors
def serve_canary(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
    model: str | None,
    version: int | None,
    percent: float | None,
    shadow: float | None,
    labels: str | None,
    reason: str,
    by: str | None,
    as_json: bool,
) -> None:
    """Put a challenger version on a share of live traffic (rolled back automatically if
    its error rate or p95 latency is worse than the champion's by the configured margins,
    or, with delayed labels, its quality).

    \b
    Example:
      raymlops serve canary --version 3 --percent 10
      raymlops serve canary --version 3 --percent 0 --shadow 50     # shadow only
      raymlops serve canary -m models:/breast-cancer@challenger --percent 10
      raymlops serve canary --version 3 --labels s3://bucket/labels/  # judge quality too
    """
    from raymlops.serve.api import serve_canary as start_canary

    _check_serve_address(address)
    config, challenger = _challenger(config_path, overrides, model, version, home)
    status = start_canary(
        config,
        challenger,
        percent=percent,
        shadow_percent=shadow,
        reason=reason,
        by=by,
        labels=labels,
        app=app,
        address=address,
        home=home,
    )
    _print_serve_status(status, as_json)


@serve.command("promote")
@_serve_target_options
@click.option("--reason", default="", help="Why (recorded in the alias history).")
@click.option("--by", default=None, help="Who (default $RAYMLOPS_USER or the login name).")
@_json_flag
@_handle_errors
def serve_promote(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
    reason: str,
    by: str | None,
    as_json: bool,
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
    _print_serve_status(status, as_json)


@serve.command("rollback")
@_serve_target_options
@click.option("--reason", default="", help="Why (recorded in the alias history).")
@click.option("--by", default=None, help="Who (default $RAYMLOPS_USER or the login name).")
@_json_flag
@_handle_errors
def serve_rollback(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
    reason: str,
    by: str | None,
    as_json: bool,
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
    _print_serve_status(status, as_json)


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
@_json_flag
@_handle_errors
def serve_stop(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    address: str | None,
    app: str | None,
    as_json: bool,
) -> None:
    """Delete the application, and stop the local Ray head raymlops started for it (only
    that head, by its recorded processes) when nothing else is served there.

    Which application: --app, else the one -c/--set configure. With none of them: every
    raymlops application on the local head this home started (each was started from this
    home, whichever config), then the head; on --address/$RAY_ADDRESS the one raymlops
    application there, and when several run there, none: they are listed (exit 2) and
    --app picks one.

    \b
    Example:
      raymlops serve stop                    # everything this home serves
      raymlops serve stop --app other-app    # only that application
    """
    from raymlops.serve.api import serve_stop as stop_serving

    _check_serve_address(address)
    config = _named_config(config_path, overrides)
    stopped = stop_serving(config, app=app, address=address, home=home)
    if as_json:
        _json_out({"stopped": stopped})
        return
    click.echo("stopped: " + ", ".join(stopped) if stopped else "nothing was running")

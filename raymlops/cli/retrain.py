"""`raymlops` commands: retrain and watch: the loop closed from the command line."""

from __future__ import annotations

import json
import sys

import click

from raymlops.cli.base import (
    _config_options,
    _handle_errors,
    _home_option,
    _json_out,
    _load,
    cli,
)
from raymlops.core.report import say


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
@click.option(
    "--canary-labels",
    default=None,
    help="Delayed labels (request_id + label) the canary's quality is judged on; default "
    "serve.canary.labels.",
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
    canary_labels: str | None,
    address: str | None,
    as_json: bool,
) -> None:
    """Apply the retrain policy once: monitor, and on drift, decay or schedule train a
    candidate, gate it against the champion, canary it on the live endpoint (when one
    serves the model), then promote or roll back — every step in the alias history.

    Exit 0 when nothing was needed or the candidate was promoted (or awaits approval), 1
    when it was not: rejected by the gate, rolled back during its canary, or its canary was
    inconclusive (fewer than serve.canary.min_requests requests).

    \b
    Example:
      raymlops retrain                                # decide from the prediction log
      raymlops retrain --force --recent-data labelled.parquet
    """
    from raymlops.loop.api import retrain as retrain_model

    if canary_labels is not None:
        overrides = (*overrides, f"serve.canary.labels={json.dumps(canary_labels)}")
    result = retrain_model(
        _load(config_path, overrides),
        force=force,
        since=since,
        canary=not no_canary,
        recent_data=recent_data,
        home=home,
        address=address,
        echo=not as_json,
    )
    if as_json:
        _json_out(result.to_dict())
    else:
        click.echo(result.summary())
    if result.outcome in ("rejected", "rolled-back", "inconclusive"):
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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the passes' results as one JSON list when the watch ends (with --iterations).",
)
@_handle_errors
def watch(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    interval: str | None,
    iterations: int | None,
    address: str | None,
    as_json: bool,
) -> None:
    """Run monitor → retrain on an interval, as a long-running job (Ctrl-C stops).

    \b
    Example:
      raymlops watch --interval 1h
      ray job submit --working-dir . -- python jobs/lifecycle.py --interval 1h
    """
    from raymlops.loop.api import watch as watch_loop

    try:
        results = watch_loop(
            _load(config_path, overrides),
            interval=interval,
            iterations=iterations,
            home=home,
            address=address,
            echo=not as_json,
        )
    except KeyboardInterrupt:
        say("stopped")
        return
    if as_json:
        _json_out([result.to_dict() for result in results])
        return
    for result in results:
        click.echo(result.summary())

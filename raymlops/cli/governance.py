"""`raymlops` commands: gate, promote, approve, rollback, models history, card."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, cast

import click

from raymlops.cli.base import (
    F,
    _fail,
    _handle_errors,
    _home_option,
    _json_out,
    _load,
    cli,
)
from raymlops.cli.models import models

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


def _name_and_version(name: str, version: str | None) -> tuple[str, int | str]:
    """NAME and VERSION (number or alias) from the two arguments, or from NAME as a
    models:/ URI (then without VERSION)."""
    from raymlops.core.model_uri import resolve_model_ref

    name, ref = resolve_model_ref(name, version)
    if ref is None:
        raise click.UsageError(
            "give NAME VERSION (a number or alias) or a URI: models:/NAME@ALIAS, models:/NAME/N"
        )
    return name, ref


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


@cli.command()
@click.argument("name", metavar="NAME|URI")
@click.argument("version", required=False)
@_policy_options
@click.option(
    "--data",
    "data_path",
    default=None,
    help="Held-out rows (Parquet/CSV file or folder with the label column) instead of the "
    "version's re-created test split.",
)
@click.option(
    "--fresh",
    "fresh_path",
    default=None,
    help="Recent labelled rows neither version trained on: the champion comparison is a "
    "paired test on them (gate.champion.confidence) instead of on the held-out rows.",
)
@click.option("--by", default=None, help="Who runs the gate (default $RAYMLOPS_USER or login).")
@click.option("--no-record", is_flag=True, help="Only evaluate: log, tag and record nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@_home_option
@_tracking_option
@_handle_errors
def gate(
    name: str,
    version: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    data_path: str | None,
    fresh_path: str | None,
    by: str | None,
    no_record: bool,
    as_json: bool,
    home: str | None,
    tracking_uri: str | None,
) -> None:
    """Gate a version on held-out rows: thresholds, champion, behaviour, fairness, latency.

    NAME VERSION (a number or alias), or one URI: models:/NAME/VERSION or
    models:/NAME@ALIAS. Exit 0 when every check passes, 1 when one fails, 2 on bad input.
    The result is logged to MLflow and attached to the version (`raymlops promote`
    requires a pass).

    \b
    Example:
      raymlops gate breast-cancer 2
      raymlops gate models:/breast-cancer@challenger
      raymlops gate breast-cancer 2 -c examples/ci/pipeline.yaml --json
      raymlops gate synthetic challenger --data data/holdout.parquet
      raymlops gate synthetic challenger --fresh data/labelled-last-week.parquet
    """
    from raymlops.loop.api import gate as gate_version

    name, ref = _name_and_version(name, version)
    registry, config = _governed(name, str(ref), config_path, overrides, tracking_uri, home)
    result = gate_version(
        name,
        ref,
        config=config,
        data=data_path,
        fresh=fresh_path,
        record=not no_record,
        by=by,
        tracking_uri=registry.tracking_uri,
        home=home,
        echo=True,
    )
    _json_out(result.to_dict()) if as_json else click.echo(result.table())
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
        if as_json:
            _json_out({"name": name, "alias": alias, "to_version": int(version), "moved": False})
        else:
            click.echo(f"{alias} of {name} already points to v{version}; nothing to do")
        return
    event = governance.promote(
        registry, name, int(version), reason=reason, by=by, alias=alias, force=force, config=config
    )
    if as_json:
        _json_out(event.to_dict())
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
@click.option("--json", "as_json", is_flag=True, help="Print the recorded event as JSON.")
@_home_option
@_tracking_option
@_handle_errors
def approve(
    name: str,
    version: str,
    by: str,
    reason: str,
    alias: str,
    as_json: bool,
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
    if as_json:
        _json_out({**event.to_dict(), "approvals": approvers})
        return
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
        _json_out(event.to_dict())
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
        _json_out([e.to_dict() for e in events])
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
@click.argument("name", metavar="NAME|URI")
@click.argument("version", required=False)
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
    name: str,
    version: str | None,
    fmt: str,
    out: str | None,
    home: str | None,
    tracking_uri: str | None,
) -> None:
    """Print or write a version's model card (use, data, search, metrics, gate, history).

    NAME VERSION (a number or alias), or one URI: models:/NAME@ALIAS or models:/NAME/VERSION.

    \b
    Example:
      raymlops card breast-cancer champion
      raymlops card models:/breast-cancer/2 --format html --out card.html
    """
    from raymlops.loop.api import card as render_card

    name, ref = _name_and_version(name, version)
    text = render_card(
        name, ref, cast(Literal["md", "html"], fmt), tracking_uri=tracking_uri, home=home
    )
    if out is None:
        click.echo(text, nl=False)
        return
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    click.echo(f"wrote {target}")

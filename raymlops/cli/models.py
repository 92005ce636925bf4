"""`raymlops` commands: models list, show and upgrade."""

from __future__ import annotations

from typing import Any

import click

from raymlops.cli.base import (
    _fail,
    _handle_errors,
    _home_option,
    _json_out,
    cli,
)

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
        _json_out(rows)
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
            _json_out([v.to_dict() for v in versions])
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
        _json_out(info)
        return
    click.echo(f"{name} v{info['version']}  aliases: {', '.join(info['aliases']) or '-'}")
    for key in ("created", "run_id", "dataset_digest", "config_hash", "trial_id"):
        click.echo(f"  {key:<15} {info[key]}")
    click.echo("  metrics:")
    for key, val in info["metrics"].items():
        click.echo(f"    {key:<22} {val:.4f}")
    env = {k.split(".")[-1]: v for k, v in info["tags"].items() if k.startswith("raymlops.env.")}
    click.echo("  environment:   " + ", ".join(f"{k} {v}" for k, v in env.items()))


@models.command("upgrade")
@click.argument("name", metavar="NAME|URI")
@click.option("--version", "version", default=None, help="Version number or alias (default: all).")
@_home_option
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: embedded).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def models_upgrade(
    name: str, version: str | None, home: str | None, tracking_uri: str | None, as_json: bool
) -> None:
    """Make versions registered before raymlops wrote MLflow's files loadable by MLflow.

    Adds the MLflow pyfunc flavor (MLmodel, signature, input example, pinned requirements)
    next to each version's existing artifacts, which stay unchanged; versions that already
    are MLflow models are left alone. Afterwards
    mlflow.pyfunc.load_model("models:/NAME/VERSION") and `mlflow models serve` work on them.
    A version that cannot be upgraded is reported and the others still are; the exit code
    is then 1.

    \b
    Example:
      raymlops models upgrade breast-cancer
      raymlops models upgrade breast-cancer --version 3
      raymlops models upgrade models:/breast-cancer@champion
    """
    from raymlops.core.model_uri import resolve_model_ref
    from raymlops.registry.store import Registry

    name, ref = resolve_model_ref(name, version)
    registry = Registry(tracking_uri, home)
    refs = [ref] if ref is not None else [v.version for v in registry.list_versions(name)]
    results: list[dict[str, Any]] = []
    for one in refs:
        result: dict[str, Any] = {"name": name, "version": one, "added": [], "error": None}
        try:
            result["version"] = registry.version_info(name, one).version
            result["added"] = registry.add_mlflow_flavor(name, one)
        except Exception as exc:  # reported with its version; the others are upgraded still
            text = str(exc).strip()
            result["error"] = text.splitlines()[0] if text else type(exc).__name__
        results.append(result)
        if not as_json:
            if result["error"] is not None:
                done = f"not upgraded: {result['error']}"
            elif result["added"]:
                done = f"flavor added ({', '.join(result['added'])})"
            else:
                done = "already an MLflow model"
            click.echo(f"{name} v{result['version']}: {done}")
    if as_json:
        _json_out(results)
    failed = [r for r in results if r["error"] is not None]
    if failed:
        versions = ", ".join(f"v{r['version']}" for r in failed)
        _fail(f"{len(failed)} of {len(results)} version(s) of {name} not upgraded: {versions}", 1)

"""`raymlops` commands: config show, validate and docs."""

from __future__ import annotations

import click

from raymlops.cli.base import (
    _config_options,
    _handle_errors,
    _json_out,
    _load,
    cli,
)

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
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@_handle_errors
def config_validate(file: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Check a config file; exit 2 with the offending key on error (with --json, after
    printing {"file", "valid": false, "error"}).

    \b
    Example:
      raymlops config validate examples/breast_cancer.yaml
    """
    from raymlops.core.errors import RaymlopsError

    try:
        cfg = _load(file, overrides)
    except RaymlopsError as exc:
        if as_json:  # the verdict is the document; the error line and exit code follow
            _json_out({"file": file, "valid": False, "error": str(exc)})
        raise
    if as_json:
        _json_out({"file": file, "valid": True, "name": cfg.name, "model": cfg.registry.model_name})
        return
    click.echo(f"{file}: valid (pipeline '{cfg.name}', model '{cfg.registry.model_name}')")


@config.command("docs")
@click.option("--all", "every_key", is_flag=True, help="Every key, dotted, with its default.")
@click.option(
    "--readme",
    type=click.Path(dir_okay=False, exists=True),
    help="Rewrite the generated table in this Markdown file (between its config-table "
    "markers) instead of printing it.",
)
@_handle_errors
def config_docs(every_key: bool, readme: str | None) -> None:
    """Print the configuration reference as Markdown, from the config's field descriptions:
    the top-level keys (README's table), or with --all every key.

    \b
    Example:
      raymlops config docs --all
      raymlops config docs --readme README.md
    """
    from pathlib import Path

    from raymlops.core.config_docs import config_reference, config_table, replace_table

    if every_key and readme is not None:  # README holds the top-level table, checked by CI
        raise click.UsageError("--all prints the full reference; --readme writes the table")
    if readme is None:
        click.echo(config_reference() if every_key else config_table(), nl=False)
        return
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    updated = replace_table(text, config_table(), readme)
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    click.echo(f"{readme}: configuration table {'updated' if updated != text else 'unchanged'}")

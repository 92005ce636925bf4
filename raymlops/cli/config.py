"""`raymlops` commands: config show and validate."""

from __future__ import annotations

import click

from raymlops.cli.base import (
    _config_options,
    _handle_errors,
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
@_handle_errors
def config_validate(file: str, overrides: tuple[str, ...]) -> None:
    """Check a config file; exit 2 with the offending key on error.

    \b
    Example:
      raymlops config validate examples/breast_cancer.yaml
    """
    cfg = _load(file, overrides)
    click.echo(f"{file}: valid (pipeline '{cfg.name}', model '{cfg.registry.model_name}')")

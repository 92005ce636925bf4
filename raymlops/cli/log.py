"""`raymlops log …`: the prediction log serving writes."""

from __future__ import annotations

import click

from raymlops.cli.base import _config_options, _handle_errors, _home_option, _json_out, _load, cli


@cli.group("log")
def log_group() -> None:
    """The prediction log serving writes (what `monitor` reads).

    \b
    Example:
      raymlops log compact --dry-run
    """


@log_group.command("compact")
@_config_options
@_home_option
@click.option("--dry-run", is_flag=True, help="Say what would be merged; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def compact(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Merge the prediction log's small files into one file per day and version.

    Serving writes a file per flush and replica, and readers (`monitor`) pay per file.
    Replicas compact what is an hour old every hour (serve.prediction_log.compact_every_s);
    this does it now, for every published file. Every row stays exactly once, also if this
    is killed midway (the next compaction finishes or undoes it) and beside running
    replicas; files still being written are never touched.

    \b
    Example:
      raymlops log compact
      raymlops log compact -c my.yaml --dry-run
    """
    from raymlops.serve.prediction_log import compact_prediction_log

    config = _load(config_path, overrides)

    def progress(folder: str, files: int) -> None:
        if not as_json:
            click.echo(f"  {folder.rsplit('/', 2)[-2]}/{folder.rsplit('/', 1)[-1]}: {files} files")

    result = compact_prediction_log(config, home, dry_run=dry_run, on_partition=progress)
    if as_json:
        _json_out({"model": config.registry.model_name, "dry_run": dry_run, **result.to_dict()})
        return
    verb = "would merge" if dry_run else "merged"
    click.echo(
        f"{config.registry.model_name}: {verb} {result.files_in} files into {result.files_out} "
        f"in {result.partitions} partitions"
        + ("" if dry_run else f" ({result.rows} rows, {result.seconds:.1f} s)")
        + (f"; finished {result.recovered} interrupted compactions" if result.recovered else "")
    )

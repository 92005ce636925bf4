"""`raymlops` commands: predict and batch: a registered version over rows."""

from __future__ import annotations

import contextlib
import json
import sys

import click

from raymlops.cli.base import (
    _config_options,
    _exit_fast_after,
    _handle_errors,
    _home_option,
    _json_out,
    _load_for_model,
    _model_option,
    cli,
)

# --------------------------------------------------------------------------- predict


@cli.command()
@click.argument("name", metavar="NAME|URI")
@click.option(
    "--version",
    "version",
    default=None,
    help="Version number or alias (default: champion); not with a models:/ URI.",
)
@click.option("--input", "input_path", required=True, help="Parquet/CSV file or folder.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Rows to predict."
)
@_home_option
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: embedded).")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@_handle_errors
def predict(
    name: str,
    version: str | None,
    input_path: str,
    limit: int,
    home: str | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Predict a few rows of a file with a registered model (verified before load).

    NAME is a registered model's name, or a URI that also names the version:
    models:/NAME@ALIAS or models:/NAME/VERSION.

    \b
    Example:
      raymlops predict breast-cancer --input data.parquet --limit 5
      raymlops predict models:/breast-cancer@champion --input data.parquet --json
    """
    from raymlops.core.errors import DataError
    from raymlops.core.model_uri import resolve_model_ref
    from raymlops.data.dataset import iter_tables
    from raymlops.registry.store import CHAMPION, load_predictor

    name, ref = resolve_model_ref(name, version)
    predictor = load_predictor(name, CHAMPION if ref is None else ref, tracking_uri, home)
    # The first rows only: the input may be a folder larger than memory.
    rows = next((t for t in iter_tables(input_path) if t.num_rows), None)
    if rows is None:
        raise DataError(f"{input_path} has no rows")
    rows = rows.slice(0, limit)
    frame = predictor.predict(rows).to_frame()
    if as_json:
        records = json.loads(frame.to_json(orient="records"))
        _json_out({"model": name, "version": predictor.metadata["version"], "rows": records})
        return
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
@_model_option
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
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join, e.g. ray://head:10001 or auto. A small input (batch.executor "
    "auto, at most batch.local_max_mb, no GPUs) still runs in this process without joining; "
    "batch.executor ray makes it use the cluster.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def batch(
    config_path: str | None,
    overrides: tuple[str, ...],
    home: str | None,
    input_path: str,
    output_path: str,
    model: str | None,
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
      raymlops batch -m models:/breast-cancer/3 --input data/ --output preds/
    """
    from raymlops.batch.run import run_batch
    from raymlops.cluster.launcher import is_job_address

    config, ref = _load_for_model(config_path, overrides, model, version)
    if is_job_address(address):
        raise click.UsageError(
            f"--address {address} is a job API: use `raymlops submit batch --address {address} "
            "-- --input … --output …`"
        )
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
    _json_out(result.to_dict()) if as_json else click.echo(result.summary())
    _exit_fast_after()

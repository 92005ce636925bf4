"""`raymlops` commands: data synth and profile."""

from __future__ import annotations

from typing import Literal, cast

import click

from raymlops.cli.base import (
    _handle_errors,
    _json_out,
    cli,
)

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
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@_handle_errors
def data_synth(
    rows: int,
    features: int,
    categorical: int,
    task: str,
    drift: float,
    seed: int,
    out: str,
    as_json: bool,
) -> None:
    """Write a seeded synthetic dataset with a known feature→label relation.

    \b
    Example:
      raymlops data synth --rows 5000000 --features 64 --categorical 4 --out data/synth
      raymlops data synth --rows 10000 --features 8 --drift 0.5 --out drifted.parquet
    """
    from raymlops.core.report import progress
    from raymlops.data.dataset import synth_dataset

    with progress(rows, "writing rows") as advance:
        path = synth_dataset(
            out,
            rows,
            features,
            categorical,
            cast(Literal["classification", "regression"], task),
            drift,
            seed,
            progress=advance,
        )
    if as_json:
        _json_out(
            {
                "path": str(path),
                "rows": rows,
                "numeric_features": features,
                "categorical_features": categorical,
                "task": task,
                "drift": drift,
                "seed": seed,
            }
        )
        return
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
    _json_out(version.to_dict()) if as_json else click.echo(version.summary())

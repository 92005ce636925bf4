"""`raymlops` commands: monitor: drift and KPIs of recent traffic."""

from __future__ import annotations

import click

from raymlops.cli.base import (
    _config_options,
    _fail,
    _handle_errors,
    _home_option,
    _json_out,
    _load_for_model,
    _model_option,
    cli,
)

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
@_model_option
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
    model: str | None,
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
    100 rows. The dataset drifts when the drifted features carry half of the model's feature
    importance (stored with the version at training) or the prediction drifts; with
    monitor.verdict=share, when half of the features do (all in the `monitor` section).
    A dataset without predictions gets them from the version over a 5,000-row sample.
    Exit 0 whatever the verdict (1 on drift with --fail-on-drift), 2 on bad input.

    \b
    Example:
      raymlops monitor --since 1d
      raymlops monitor -c my.yaml --source traffic.parquet --version 3 --fail-on-drift
      raymlops monitor --since 2024-05-01 --labels labels.parquet --report drift.html --json
      raymlops monitor -m models:/breast-cancer@challenger --since 2h
    """
    from raymlops.cluster.launcher import is_job_address
    from raymlops.monitor.run import run_monitor

    config, ref = _load_for_model(config_path, overrides, model, version)
    if is_job_address(address):
        raise click.UsageError(
            f"--address {address} is a job API: use `raymlops submit monitor --address {address}`"
        )
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
    if as_json:
        _json_out(result.to_dict())
    else:
        click.echo(result.summary())
    if fail_on_drift and result.drift_detected:
        drifted = ", ".join(result.dataset.drifted_features)
        _fail(f"drift detected in {result.model_name} v{result.version}: {drifted}", 1)

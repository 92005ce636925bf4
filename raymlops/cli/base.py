"""The `raymlops` group and what its commands share: error handling, common options.

`raymlops …` is a thin shell over the public API; no logic of its own.

Every command exits 0 on success, 2 on bad input (config, data, arguments) and 1 when the
work itself fails, printing one clear line instead of a traceback (RAYMLOPS_DEBUG=1 shows it).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    """`error: MESSAGE` where the library's lines go (the terminal, not the file Ray's
    lines are routed to), and exit."""
    from raymlops.core.report import current

    click.secho(f"error: {message}", fg="red", err=True, file=current().stderr)
    sys.exit(code)


def _verbose() -> bool:
    """`raymlops --verbose …` or RAYMLOPS_VERBOSE=1: show Ray's and MLflow's own lines."""
    ctx = click.get_current_context(silent=True)
    flag = bool(ctx.find_root().params.get("verbose")) if ctx is not None else False
    return flag or os.environ.get("RAYMLOPS_VERBOSE", "") not in ("", "0")


def _handle_errors(func: F) -> F:
    """Run a command with Ray's and MLflow's log lines routed to a file under the home's
    `logs/` (`raymlops.core.logs`), and its errors as one line with the right exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from raymlops.core.home import home_dir
        from raymlops.core.logs import route_foreign_logs

        ctx = click.get_current_context(silent=True)
        name = "-".join(ctx.command_path.split()[1:]) if ctx is not None else func.__name__
        home = kwargs.get("home")
        folder = home_dir(home if isinstance(home, str) else None) / "logs"
        with route_foreign_logs(folder, name or "raymlops", verbose=_verbose()) as routed:
            return _run_reporting_errors(func, args, kwargs, routed.hint)

    return wrapper  # type: ignore[return-value]


def _run_reporting_errors(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    hint: Callable[[], str],
) -> Any:
    """`func(*args, **kwargs)`; an error becomes one line (`_fail`) and an exit code:
    2 for bad input, 1 for failed work, 130 for Ctrl-C."""
    from raymlops.core.errors import RaymlopsError
    from raymlops.core.report import current

    try:
        return func(*args, **kwargs)
    except RaymlopsError as exc:
        if os.environ.get("RAYMLOPS_DEBUG"):
            traceback.print_exc(file=current().stderr)
        # Bad input (exit 2) is explained by its own line; failed work may need the log.
        _fail(str(exc) + (hint() if exc.exit_code != 2 else ""), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except (click.ClickException, click.exceptions.Exit, SystemExit):
        raise
    except Exception as exc:  # the last line of defence: one line, not a traceback
        from raymlops.core.storage import network_failure

        if os.environ.get("RAYMLOPS_DEBUG"):
            traceback.print_exc(file=current().stderr)
        unreachable = network_failure(exc)
        if unreachable is not None:
            _fail(f"the object store does not answer: {unreachable}" + hint(), 1)
        _fail(f"{_one_line(exc)} (set RAYMLOPS_DEBUG=1 for the traceback)" + hint(), 1)


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """`Type: message` of an unexpected error on one line. An error raised inside a Ray
    task or actor names only the task on its first line; what went wrong is the error it
    wraps (`cause`), shown whole (its lines joined: a crashed HAProxy's alert is on its
    last one), with the task it came from."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        origin = re.sub(r"\x1b\[[0-9;]*m", "", first).split(" (pid=")[0]  # no colours
        text = " | ".join(line.strip() for line in str(cause).splitlines() if line.strip())
        if len(text) > limit:
            text = text[:limit] + "…"
        return f"{type(cause).__name__}" + (f" in {origin}" if origin else "") + f": {text}"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {detail}"


def _config_options(func: F) -> F:
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set train.epochs=5 (repeatable).",
    )(func)
    func = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Pipeline YAML; default: the embedded breast-cancer example.",
    )(func)
    return func


def _home_option(func: F) -> F:
    return click.option(
        "--home",
        envvar="RAYMLOPS_HOME",
        default=None,
        help="State folder of the embedded default (MLflow store, Tune runs); "
        "default $RAYMLOPS_HOME or ./.raymlops.",
    )(func)


def _load(config_path: str | None, overrides: tuple[str, ...]) -> Any:
    from raymlops.core.config import load_config

    return load_config(config_path, list(overrides))


_MODEL_HELP = (
    "Registered model: a name, models:/NAME@ALIAS or models:/NAME/VERSION (then without "
    "--version); default: the config's registry.model_name."
)


def _model_option(func: F) -> F:
    """-m/--model NAME|URI on a command that takes its model from the config."""
    return click.option(
        "-m", "--model", "model", default=None, metavar="NAME|URI", help=_MODEL_HELP
    )(func)


def _load_for_model(
    config_path: str | None,
    overrides: tuple[str, ...],
    model: str | None,
    version: str | None,
) -> tuple[Any, int | str | None]:
    """The config, with -m's model name as `registry.model_name`, and the version or alias
    asked for (-m's URI or --version; None: the command's default)."""
    from raymlops.core.model_uri import resolve_model_ref

    if model is None:
        return _load(config_path, overrides), _ref_or_none(version)
    name, ref = resolve_model_ref(model, version)
    return _load(config_path, (*overrides, f"registry.model_name={json.dumps(name)}")), ref


def _ref_or_none(version: str | None) -> int | str | None:
    return None if version is None else _version_arg(version)


def _finite(value: Any) -> Any:
    """`value` with every NaN/infinite float as None: JSON has no NaN (a bare `NaN` breaks
    every strict parser, e.g. an AUC on a one-class split)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_out(value: Any) -> None:
    """`value` as JSON on stdout: one object or array, nothing else (NaN as null)."""
    click.echo(json.dumps(_finite(value), indent=2, default=str, allow_nan=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="raymlops")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show Ray's, Serve's and MLflow's own log lines too (by default they go to a file "
    "under the home's logs/, named when a command fails; also RAYMLOPS_VERBOSE=1).",
)
def cli(verbose: bool) -> None:
    """raymlops — the ML lifecycle for PyTorch models on Ray.

    \b
    Example (embedded default: a bundled dataset, SQLite MLflow store, no server):
      raymlops run                    # train, register, make champion, sample predictions
      raymlops models list            # registered models, versions, aliases
      mlflow ui --backend-store-uri sqlite:///.raymlops/mlflow.db
    """


#: Set by a command that ends with every file closed and Ray stopped (batch): main() then
#: skips the interpreter's teardown, which takes 1-2 s once torch and MLflow are loaded.
_EXIT = {"fast": False}


def _exit_fast_after() -> None:
    """This command leaves nothing to tear down: exit without the interpreter's teardown."""
    _EXIT["fast"] = True


def _version_arg(version: str) -> int | str:
    return int(version) if version.isdigit() else version

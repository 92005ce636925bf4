"""The closed loop's commands as one call each: what `raymlops gate`, `card`, `retrain` and
`watch` do, for a notebook or a scheduler, without assembling a Registry or a canary.

Each function is the CLI command's whole work (the CLI only parses and renders), and takes
a model as a name and version/alias or as one `models:/NAME@ALIAS`/`models:/NAME/VERSION`
URI. The building blocks stay public for finer control: `run_gate`, `render_card`,
`raymlops.loop.retrain.retrain_once` and `raymlops.loop.retrain.watch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from raymlops.core.model_uri import resolve_model_ref
from raymlops.core.report import say

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig
    from raymlops.loop.gate_result import GateResult
    from raymlops.loop.retrain import RetrainResult

__all__ = ["card", "gate", "retrain", "watch"]


def _name_and_ref(name_or_uri: str, version: int | str | None) -> tuple[str, int | str]:
    name, ref = resolve_model_ref(name_or_uri, version)
    if ref is None:
        from raymlops.core.errors import UserInputError

        raise UserInputError(
            f"which version of '{name}'? Give a version number or alias, or a URI "
            "(models:/NAME@ALIAS, models:/NAME/VERSION)"
        )
    return name, ref


def gate(
    name_or_uri: str,
    version: int | str | None = None,
    *,
    config: PipelineConfig | None = None,
    data: str | None = None,
    fresh: str | None = None,
    record: bool = True,
    by: str | None = None,
    tracking_uri: str | None = None,
    home: str | Path | None = None,
    echo: bool = False,
) -> GateResult:
    """`raymlops gate`: gate a version (`name_or_uri` and `version`, or a models:/ URI) on
    held-out rows — thresholds, champion, behaviour, fairness, latency — and (with `record`)
    log the result to MLflow and attach it to the version.

    `config` supplies the gate policy (None: the config the version was trained with) and,
    without `tracking_uri`, the registry; `data` is a Parquet/CSV file of held-out rows
    instead of the version's re-created test split; `fresh` a file of recent labelled rows
    neither version trained on, which the champion comparison is a paired test on. See
    `run_gate` for the details.
    """
    from raymlops.loop.gate import run_gate
    from raymlops.registry.store import Registry

    name, ref = _name_and_ref(name_or_uri, version)
    uri = tracking_uri or (config.registry.tracking_uri if config is not None else None)
    return run_gate(
        Registry(uri, home),
        config,
        name,
        ref,
        data,
        record=record,
        by=by,
        echo=say if echo else None,
        fresh=fresh,
    )


def card(
    name_or_uri: str,
    version: int | str | None = None,
    fmt: Literal["md", "html"] = "md",
    *,
    tracking_uri: str | None = None,
    home: str | Path | None = None,
) -> str:
    """`raymlops card`: a version's model card (use, data, search, metrics, gate, history)
    as Markdown (`md`) or a self-contained HTML page (`html`)."""
    from raymlops.loop.cards import render_card
    from raymlops.registry.store import Registry

    name, ref = _name_and_ref(name_or_uri, version)
    return render_card(Registry(tracking_uri, home), name, ref, fmt)


def retrain(
    config: PipelineConfig,
    *,
    force: bool = False,
    since: str | None = None,
    recent_data: str | None = None,
    canary: bool = True,
    home: str | Path | None = None,
    address: str | None = None,
    echo: bool = True,
) -> RetrainResult:
    """`raymlops retrain`: apply the retrain policy once — monitor the traffic since `since`,
    and on drift, decay or schedule (or `force`) train a candidate on the training data plus
    `recent_data`, gate it against the champion, canary it on the live endpoint when one
    serves the model (unless `canary` is False), then promote or roll back."""
    from raymlops.loop.retrain import ServingCanary, retrain_once

    target = ServingCanary.if_serving(config, home=home, address=address) if canary else None
    return retrain_once(
        config,
        force=force,
        since=since,
        canary=target,
        recent_data=recent_data,
        home=home,
        address=address,
        echo=echo,
    )


def watch(
    config: PipelineConfig,
    *,
    interval: str | None = None,
    iterations: int | None = None,
    canary: bool = True,
    home: str | Path | None = None,
    address: str | None = None,
    echo: bool = True,
) -> list[RetrainResult]:
    """`raymlops watch`: monitor → retrain every `interval` (default
    `retrain.watch_interval`), forever or for `iterations` passes, with the live endpoint's
    canary when one serves the model (unless `canary` is False); the passes' results."""
    from raymlops.loop.retrain import ServingCanary
    from raymlops.loop.retrain import watch as watch_loop

    target = ServingCanary.if_serving(config, home=home, address=address) if canary else None
    return watch_loop(
        config,
        interval=interval,
        iterations=iterations,
        canary=target,
        home=home,
        address=address,
        echo=echo,
    )

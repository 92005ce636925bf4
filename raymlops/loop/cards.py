"""Model cards: what a registered version is, how it was made and how it behaves.

A card is assembled from what the registry already records — the version's verified
artifacts (config, dataset, training profile, search space), its MLflow run and trial runs,
its latest gate result and the model's alias history — plus the config's `card` texts
(intended use, limitations). It renders as Markdown or as a self-contained HTML page.

Every registered version gets `card/card.md` and `card/card.html` as artifacts of its
MLflow run (outside the digest-verified `model/` folder); the gate, promote and rollback
regenerate them so the alias history on the card stays current. `render_card` builds a
fresh one at any time (`raymlops card`, and the serving endpoint `/v1/model/card`).
"""

from __future__ import annotations

import html
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from raymlops.registry.store import CARD_ARTIFACT_PATH

if TYPE_CHECKING:
    from raymlops.loop.gate_result import GateResult
    from raymlops.registry.store import AliasEvent, ModelVersionInfo, Registry

__all__ = [
    "CARD_ARTIFACT_PATH",
    "ModelCard",
    "build_card",
    "refresh_card",
    "render_card",
    "store_card",
]

_CARD_TAG = "raymlops.card"
_MAX_TRIALS = 25


# --------------------------------------------------------------------------- document model


@dataclass
class _Block:
    kind: Literal["text", "kv", "table", "note"]
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class _Section:
    title: str
    blocks: list[_Block] = field(default_factory=list)

    def text(self, value: str) -> None:
        self.blocks.append(_Block("text", value))

    def note(self, value: str) -> None:
        self.blocks.append(_Block("note", value))

    def kv(self, pairs: list[tuple[str, Any]]) -> None:
        self.blocks.append(_Block("kv", rows=[[k, _cell(v)] for k, v in pairs]))

    def table(self, headers: list[str], rows: list[list[Any]], caption: str = "") -> None:
        if caption:
            self.blocks.append(_Block("text", caption))
        self.blocks.append(
            _Block("table", headers=headers, rows=[[_cell(c) for c in r] for r in rows])
        )


@dataclass
class ModelCard:
    """A card as sections of text, key/value lists and tables; `to_markdown`/`to_html`."""

    title: str
    subtitle: str
    sections: list[_Section]

    def section_titles(self) -> list[str]:
        return [s.title for s in self.sections]

    def to_markdown(self) -> str:
        out = [f"# {self.title}", "", self.subtitle, ""]
        for section in self.sections:
            out += [f"## {section.title}", ""]
            for block in section.blocks:
                if block.kind == "text":
                    out += [block.text, ""]
                elif block.kind == "note":
                    out += [f"> {block.text}", ""]
                elif block.kind == "kv":
                    out += ["| | |", "| --- | --- |"]
                    out += [f"| **{_md(k)}** | {_md(v)} |" for k, v in block.rows]
                    out.append("")
                else:
                    out.append("| " + " | ".join(_md(h) for h in block.headers) + " |")
                    out.append("|" + " --- |" * len(block.headers))
                    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows]
                    out.append("")
        return "\n".join(out).rstrip() + "\n"

    def to_html(self) -> str:
        body: list[str] = [
            f"<h1>{html.escape(self.title)}</h1>",
            f'<p class="subtitle">{html.escape(self.subtitle)}</p>',
            "<nav><ol>"
            + "".join(
                f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>'
                for i, s in enumerate(self.sections)
            )
            + "</ol></nav>",
        ]
        for i, section in enumerate(self.sections):
            body.append(f'<section id="s{i}"><h2>{html.escape(section.title)}</h2>')
            for block in section.blocks:
                if block.kind == "text":
                    body.append(f"<p>{html.escape(block.text)}</p>")
                elif block.kind == "note":
                    body.append(f'<p class="note">{html.escape(block.text)}</p>')
                elif block.kind == "kv":
                    rows = "".join(
                        f"<tr><th>{html.escape(k)}</th><td>{_html_cell(v)}</td></tr>"
                        for k, v in block.rows
                    )
                    body.append(f'<table class="kv">{rows}</table>')
                else:
                    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                    rows = "".join(
                        "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                        for row in block.rows
                    )
                    body.append(
                        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
                    )
            body.append("</section>")
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n"
        )


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1f2328;
background:#f6f8fa;margin:0}
main{max-width:1040px;margin:0 auto;padding:24px 32px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;border-bottom:1px solid #d0d7de;
padding-bottom:4px;margin-top:32px}.subtitle{color:#59636e;margin-top:0}
nav ol{columns:2;color:#59636e;font-size:14px}a{color:#0969da;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13.5px;width:100%}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:#f0f3f6}tbody tr:nth-child(even){background:#f9fafb}
table.kv th{width:28%;background:#f6f8fa;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#59636e;font-style:italic}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-weight:600;font-size:12.5px}
.passed{background:#dafbe1;color:#116329}.failed{background:#ffebe9;color:#a40e26}
.skipped{background:#eaeef2;color:#59636e}
"""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 or value == 0 else f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _md(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _html_cell(value: str) -> str:
    if value in ("passed", "failed", "skipped"):
        return f'<span class="badge {value}">{value}</span>'
    return html.escape(value)


# --------------------------------------------------------------------------- gathering


def _read_json(folder: Path, name: str) -> Any:
    path = folder / name
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _parameter_count(weights: Path) -> int | None:
    """Trainable parameters from the safetensors header (no tensor is loaded, no code run);
    BatchNorm running statistics are buffers, not parameters, and are left out."""
    try:
        with weights.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return None
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return int(
        sum(
            math.prod(spec["shape"])
            for key, spec in header.items()
            if key != "__metadata__" and not key.endswith(buffers)
        )
    )


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def build_card(registry: Registry, name: str, version: int | str) -> ModelCard:
    """Gather everything the registry knows about a version into a ModelCard."""
    from raymlops.loop.gate_result import load_gate_result, recorded_gate

    info = registry.version_info(name, version)
    folder, _ = registry.download(name, info.version)
    config = _read_json(folder, "config.json") or {}
    dataset = _read_json(folder, "dataset.json") or {}
    profile = _read_json(folder, "profile.json") or {}
    search = _read_json(folder, "search.json") or {}
    architecture = _read_json(folder, "architecture.json") or {}
    preprocessing = _read_json(folder, "preprocessing.json") or {}
    run = registry.get_run(info.run_id) if info.run_id else None
    gate_tags = recorded_gate(info)
    gate = load_gate_result(registry, gate_tags["run_id"]) if "run_id" in gate_tags else None
    events = [
        e for e in registry.alias_history(name) if info.version in (e.to_version, e.from_version)
    ]
    card_cfg = config.get("card") or {}
    sources = _Sources(
        registry, name, info, config, dataset, profile, search, architecture,
        preprocessing, run, gate_tags, gate, events, card_cfg, folder,
    )  # fmt: skip
    sections = [section(sources) for section in _SECTIONS]

    return ModelCard(
        title=f"Model card: {name} v{info.version}",
        subtitle=(
            f"{dataset.get('task', 'model')} · aliases: {', '.join(info.aliases) or 'none'} · "
            f"generated {_when(time.time())} by raymlops"
        ),
        sections=sections,
    )


@dataclass
class _Sources:
    """What a version's card is made from: its registry record, the artifacts it was
    registered with, its MLflow run, its gate and its alias history."""

    registry: Registry
    name: str
    info: ModelVersionInfo
    config: dict[str, Any]
    dataset: dict[str, Any]
    profile: dict[str, Any]
    search: dict[str, Any]
    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    run: Any
    gate_tags: dict[str, str]
    gate: GateResult | None
    events: list[AliasEvent]
    card_cfg: dict[str, Any]
    folder: Path


def _overview(s: _Sources) -> _Section:
    """1. Overview."""
    name = s.name
    info = s.info
    config = s.config
    dataset = s.dataset
    gate_tags = s.gate_tags
    overview = _Section("Overview")
    if config.get("description"):
        overview.text(str(config["description"]).strip())
    env = info.tags_under("raymlops.env.")
    overview.kv(
        [
            ("model", name),
            ("version", info.version),
            ("aliases", ", ".join(info.aliases) or "none"),
            ("registered", _when(info.created)),
            ("task", dataset.get("task") or info.tags.get("raymlops.task")),
            ("MLflow run", info.run_id),
            ("config hash", info.tags.get("raymlops.config_hash")),
            ("code version", info.tags.get("raymlops.code_version")),
            ("environment", ", ".join(f"{k} {v}" for k, v in sorted(env.items())) or "-"),
            ("latest gate", gate_tags.get("status", "not gated yet")),
        ]
    )
    return overview


def _intended_use(s: _Sources) -> _Section:
    """2. Intended use and limitations."""
    card_cfg = s.card_cfg
    use = _Section("Intended use and limitations")
    use.kv(
        [
            ("intended use", card_cfg.get("intended_use") or "not stated (set card.intended_use)"),
            ("limitations", card_cfg.get("limitations") or "not stated (set card.limitations)"),
        ]
    )
    use.note(
        "Measured behaviour below is on held-out rows of the training data only; it says "
        "nothing about data unlike it (see the drift baseline)."
    )
    return use


def _architecture_section(s: _Sources) -> _Section:
    """3. Architecture."""
    folder = s.folder
    architecture = s.architecture
    preprocessing = s.preprocessing
    arch = _Section("Model architecture")
    arch.kv(
        [
            ("architecture", architecture.get("name")),
            ("parameters (architecture)", architecture.get("params")),
            ("parameter count", _parameter_count(folder / "weights.safetensors")),
            ("input width (after preprocessing)", architecture.get("in_features")),
            ("output width", architecture.get("out_features")),
            ("numeric features", ", ".join(preprocessing.get("numeric", [])) or "-"),
            ("categorical features", ", ".join(preprocessing.get("categorical", [])) or "-"),
            ("classes", ", ".join(preprocessing.get("classes") or []) or "-"),
            ("weights", "weights.safetensors (SHA-256 verified before load; no pickles)"),
        ]
    )
    return arch


def _training_data(s: _Sources) -> _Section:
    """4. Training data."""
    config = s.config
    dataset = s.dataset
    run = s.run
    data = _Section("Training data")
    split = dataset.get("split") or {}
    data.kv(
        [
            ("source", dataset.get("source")),
            ("digest", f"sha256:{dataset.get('digest')}"),
            ("rows", dataset.get("num_rows")),
            (
                "split (train/validation/test)",
                f"{split.get('train')}/{split.get('validation')}/{split.get('test')}"
                + (f", seed {config['data']['split']['seed']}" if "data" in config else ""),
            ),
            ("label", dataset.get("label")),
            ("trained", _when(run.info.start_time / 1000 if run else None)),
        ]
    )
    schema = dataset.get("schema") or {}
    features = set(dataset.get("features") or [])
    ids = set(dataset.get("id_columns") or [])

    def role(col: str) -> str:
        if col == dataset.get("label"):
            return "label"
        if col in ids:
            return "id"
        return "feature" if col in features else "not used"

    data.table(["column", "type", "role"], [[c, t, role(c)] for c, t in schema.items()])
    return data


def _hyperparameters(s: _Sources) -> _Section:
    """5. Hyperparameters and search space."""
    registry = s.registry
    info = s.info
    config = s.config
    search = s.search
    run = s.run
    hp = _Section("Hyperparameters and search")
    train_cfg = _applied_train_settings(config.get("train") or {})
    hp.kv(
        [("model." + k, v) for k, v in (config.get("model", {}).get("params") or {}).items()]
        + [("train." + k, v) for k, v in train_cfg.items()]
    )
    space = search.get("search_space") or {}
    if space:
        hp.table(
            ["dimension", "type", "values / range"],
            [
                [
                    dim,
                    spec.get("type"),
                    spec.get("values")
                    if "values" in spec
                    else f"[{spec.get('low')}, {spec.get('high')}]",
                ]
                for dim, spec in space.items()
            ],
            caption=(
                f"Search space explored: {search.get('trials')} trial(s), scheduler "
                f"{search.get('scheduler')}, ranked by {search.get('metric')} "
                f"({search.get('mode')}); best: {_cell(search.get('best_params'))}."
            ),
        )
    else:
        hp.note("No search space: the configuration above was trained as is.")
    trials = _trial_rows(
        registry,
        info.run_id,
        run,
        str(search.get("metric") or "val_loss"),
        int(train_cfg.get("epochs") or 0),
    )
    if trials:
        hp.table(*trials, caption="Trials (nested MLflow runs):")
    return hp


def _metrics_section(s: _Sources) -> _Section:
    """6. Metrics overall and per slice."""
    info = s.info
    gate = s.gate
    metrics = _Section("Metrics")
    names = sorted({k.split("_", 1)[1] for k in info.metrics if k.startswith(("val_", "test_"))})
    metrics.table(
        ["metric", "validation (best trial)", "test (held-out)"],
        [[m, info.metrics.get(f"val_{m}"), info.metrics.get(f"test_{m}")] for m in names],
    )
    if gate is not None and gate.slices:
        for column, rows in gate.slices.items():
            keys = list(rows[0]["metrics"]) if rows else []
            keys = [k for k in keys if k != "loss"]
            metrics.table(
                ["slice", "rows", *keys],
                [[r["slice"], r["rows"], *(r["metrics"].get(k) for k in keys)] for r in rows],
                caption=f"Per slice of '{column}' (gate run {gate.run_id}, test rows):",
            )
    elif gate is not None:
        metrics.note("The gate configured no slice columns (gate.slices).")
    else:
        metrics.note("Per-slice metrics come from the gate: run `raymlops gate` on this version.")
    return metrics


def _fairness_section(s: _Sources) -> _Section:
    """7. Fairness."""
    gate = s.gate
    fairness = _Section("Fairness")
    if gate is not None and gate.fairness:
        f = gate.fairness
        fairness.kv(
            [
                ("sensitive column", f["sensitive_column"]),
                ("positive class", f["positive_class"]),
                ("demographic parity difference", f["demographic_parity_difference"]),
                ("equalized odds difference", f["equalized_odds_difference"]),
            ]
        )
        fairness.table(
            ["group", "rows", "selection rate", "true positive rate", "false positive rate"],
            [
                [
                    g,
                    int(r["rows"]),
                    r["selection_rate"],
                    r["true_positive_rate"],
                    r["false_positive_rate"],
                ]
                for g, r in f["groups"].items()
            ],
        )
    else:
        fairness.note(
            "No fairness evaluation recorded: configure gate.fairness (a sensitive column and "
            "limits) and run the gate."
        )
    return fairness


def _gate_section(s: _Sources) -> _Section:
    """8. Gate."""
    name = s.name
    info = s.info
    gate_tags = s.gate_tags
    gate = s.gate
    gate_section = _Section("Validation gate")
    if gate is not None:
        gate_section.kv(
            [
                ("result", gate.status),
                ("when", gate_tags.get("time")),
                ("MLflow run", gate.run_id),
                (
                    "rows",
                    f"{gate.data.get('rows')} "
                    f"({gate.data.get('split')} of {gate.data.get('source')})",
                ),
                ("champion compared", gate_tags.get("champion")),
                ("comparison", _comparison_text(gate)),
            ]
            + (
                [
                    (
                        "latency p50 / p95 (ms)",
                        f"{gate.latency['p50_ms']:.2f} / {gate.latency['p95_ms']:.2f}",
                    )
                ]
                if gate.latency
                else []
            )
        )
        gate_section.table(
            ["kind", "check", "value", "limit", "result", "detail"],
            [[c.kind, c.name, c.value, c.limit, c.status, c.detail] for c in gate.checks],
        )
    else:
        gate_section.note("Not gated yet: run `raymlops gate " + f"{name} {info.version}`.")
    return gate_section


def _comparison_text(gate: GateResult) -> str:
    """What the champion comparison was based on: the paired test on fresh rows (method,
    rows, difference and its interval), the held-out rows and why, or why none."""
    compared = gate.comparison or {}
    basis = compared.get("basis")
    if basis is None:
        return "-"
    text = str(compared.get("summary") or compared.get("note") or "")
    if compared.get("cleared"):
        text += f"; {compared['cleared']}"
    return f"{basis}: {text}" if text else str(basis)


def _drift_baseline(s: _Sources) -> _Section:
    """9. Drift baseline."""
    profile = s.profile
    drift = _Section("Drift baseline (training profile)")
    drift.text(
        f"Monitoring compares production traffic with this profile of the "
        f"{profile.get('num_rows', '?')} training rows (profile.json)."
    )
    numeric_rows, categorical_rows = [], []
    for col, stats in (profile.get("columns") or {}).items():
        if stats.get("kind") == "numeric":
            q = stats.get("quantiles") or {}
            numeric_rows.append(
                [
                    col,
                    stats.get("mean"),
                    stats.get("std"),
                    stats.get("min"),
                    q.get("0.50"),
                    stats.get("max"),
                    stats.get("missing"),
                ]
            )
        else:
            frequencies = (stats.get("frequencies") or {}).items()
            top = sorted(frequencies, key=lambda kv: (-kv[1], kv[0]))[:3]
            categorical_rows.append(
                [
                    col,
                    stats.get("distinct"),
                    ", ".join(f"{k} ({v})" for k, v in top),
                    stats.get("missing"),
                ]
            )
    if numeric_rows:
        drift.table(
            ["numeric feature", "mean", "std", "min", "median", "max", "missing"], numeric_rows
        )
    if categorical_rows:
        drift.table(
            ["categorical feature", "distinct", "most frequent", "missing"], categorical_rows
        )
    label = profile.get("label") or {}
    if label.get("kind") == "categorical":
        drift.kv([("label distribution", label.get("frequencies"))])
    elif label.get("kind") == "numeric":
        drift.kv([("label mean / std", f"{_cell(label.get('mean'))} / {_cell(label.get('std'))}")])
    return drift


def _alias_history(s: _Sources) -> _Section:
    """10. Alias history."""
    name = s.name
    info = s.info
    events = s.events
    hist = _Section("Alias history")
    if events:
        hist.table(
            ["#", "when", "alias", "action", "from → to", "by", "reason"],
            [
                [
                    e.sequence,
                    _when(e.timestamp),
                    e.alias,
                    e.action + (" (forced)" if e.details.get("forced") else ""),
                    f"{_v(e.from_version)} → {_v(e.to_version)}",
                    e.by,
                    e.reason,
                ]
                for e in events
            ],
            caption=f"Events involving v{info.version} "
            f"(all of them: raymlops models history {name}).",
        )
    else:
        hist.note("No alias changes recorded for this version.")
    return hist


_SECTIONS: tuple[Callable[[_Sources], _Section], ...] = (
    _overview,
    _intended_use,
    _architecture_section,
    _training_data,
    _hyperparameters,
    _metrics_section,
    _fairness_section,
    _gate_section,
    _drift_baseline,
    _alias_history,
)


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def _applied_train_settings(train: dict[str, Any]) -> dict[str, Any]:
    """The `train` settings that applied to this version: a CPU model does not list GPUs
    per worker, a single-process trial not the Ray Train workers' resources."""
    skipped = set()
    if not train.get("use_gpu"):
        skipped.add("gpus_per_worker")
    if int(train.get("num_workers") or 1) == 1:
        skipped |= {"cpus_per_worker", "ingest_cpus"}
    return {k: v for k, v in train.items() if k not in skipped}


def _trial_end(registry: Registry, trial: Any, metric: str, limit: int) -> str:
    """How a trial ended, in words (Ray's TERMINATED says only that it is over): its
    `raymlops.trial_outcome` tag where the search recorded one, else read from the epochs
    it ran — the steps of its metric history — against the epoch limit."""
    tags = trial.data.tags
    outcome = tags.get("raymlops.trial_outcome")
    if outcome == "error" or tags.get("raymlops.trial_status") == "ERROR":
        return "error"
    try:
        history = registry.client.get_metric_history(trial.info.run_id, metric)
    except Exception:  # the card is documentation: an unreadable history is not fatal
        history = []
    epochs = max((int(m.step) for m in history), default=0)
    of = f" of {limit}" if limit else ""
    if outcome == "completed" or (outcome is None and limit and epochs >= limit):
        return f"ran to the limit ({epochs} epochs)" if epochs else "ran to the limit"
    if outcome == "early_stopped":
        return f"early-stopped (patience) at epoch {epochs}{of}"
    if outcome == "stopped":
        return f"early-stopped by the scheduler at epoch {epochs}{of}"
    return f"early-stopped at epoch {epochs}{of}" if epochs else "finished"


def _trial_rows(
    registry: Registry, run_id: str | None, run: Any, metric: str, limit: int = 0
) -> tuple[list[str], list[list[Any]]] | None:
    if not run_id or run is None:
        return None
    children = registry.child_runs(run)
    trials = [c for c in children if "raymlops.trial_id" in c.data.tags]
    if not trials:
        return None
    params = sorted({k for c in trials for k in c.data.params})

    def last(c: Any) -> tuple[bool, float]:
        value = c.data.metrics.get(metric)
        return value is None, value if isinstance(value, float) else 0.0

    # Cut to the shown trials first: how each ended costs an MLflow call (its history).
    shown = sorted(trials, key=last)[:_MAX_TRIALS]
    rows = [
        [
            c.data.tags["raymlops.trial_id"],
            _trial_end(registry, c, metric, _trial_epochs(c, limit)),
            *(c.data.params.get(p, "-") for p in params),
            c.data.metrics.get(metric),
        ]
        for c in shown
    ]
    return ["trial", "ended", *params, f"{metric} (last epoch)"], rows


def _trial_epochs(trial: Any, default: int) -> int:
    """A trial's own epoch limit: its sampled `train.epochs` when the search varied it, else
    the configured `default`."""
    value = trial.data.params.get("train.epochs")
    if value is None:
        return default
    try:
        return int(float(json.loads(value) if isinstance(value, str) else value))
    except (TypeError, ValueError):
        return default


# --------------------------------------------------------------------------- public API


def render_card(
    registry: Registry, name: str, version: int | str, fmt: Literal["md", "html"] = "md"
) -> str:
    """The model card of a version (number or alias) as Markdown (`md`) or HTML (`html`)."""
    if fmt not in ("md", "html"):
        from raymlops.core.errors import UserInputError

        raise UserInputError(f"unknown card format '{fmt}' (md or html)")
    card = build_card(registry, name, version)
    return card.to_markdown() if fmt == "md" else card.to_html()


def store_card(registry: Registry, name: str, version: int | str) -> list[str]:
    """Render the card (Markdown and HTML) and store it as `card/card.md` and
    `card/card.html` artifacts of the version's MLflow run; returns their artifact URIs."""
    info = registry.version_info(name, version)
    if not info.run_id:
        from raymlops.core.errors import RegistryError

        raise RegistryError(f"{name} v{info.version} has no MLflow run to store its card in")
    card = build_card(registry, name, info.version)
    with tempfile.TemporaryDirectory(prefix="raymlops-card-") as tmp:
        folder = Path(tmp)
        (folder / "card.md").write_text(card.to_markdown(), encoding="utf-8")
        (folder / "card.html").write_text(card.to_html(), encoding="utf-8")
        base = registry.log_artifacts(info.run_id, folder, CARD_ARTIFACT_PATH)
    uris = [f"{base}/card.md", f"{base}/card.html"]
    registry.set_version_tag(name, info.version, _CARD_TAG, uris[0])
    return uris


def refresh_card(
    registry: Registry,
    name: str,
    version: int | str,
    echo: Callable[[str], None] | None = None,
) -> bool:
    """`store_card`, but a failure is a warning, not an error: a card is documentation and
    must not undo a registration, gate or promotion that already happened."""
    try:
        store_card(registry, name, version)
        return True
    except Exception as exc:  # pragma: no cover - reported, never raised
        message = f"model card of {name} v{version} not updated: {type(exc).__name__}: {exc}"
        if echo is not None:
            echo(f"  warning: {message}")
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return False

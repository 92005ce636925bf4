"""The `raymlops` command as a user types it: subprocesses with RAYMLOPS_HOME=cwd=tmp_path.

Only `raymlops run` starts Ray (once, in a module fixture); the other commands here either
never need it or fail on bad input before it would start.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pandas as pd
import pytest
import yaml

from raymlops.data.dataset import describe_path, synth_dataset
from raymlops.registry.store import load_predictor

pytestmark = pytest.mark.integration

RAYMLOPS = str(Path(sys.executable).with_name("raymlops"))
# Environment that would point raymlops somewhere other than the test's own home.
SCRUBBED_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYMLOPS_TUNE_STORAGE", "RAYMLOPS_DEBUG")


def raymlops(*args: str, home: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `raymlops ARGS` in `home` with RAYMLOPS_HOME=home."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["RAYMLOPS_HOME"] = str(home)
    return subprocess.run(
        [RAYMLOPS, *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout
    )


def registered_versions(home: Path) -> int:
    """Model versions in the embedded MLflow store under `home` (0 if it does not exist)."""
    db = home / "mlflow.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM model_versions").fetchone()[0])


def the_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a failed command; progress lines ('▸ …') may precede it."""
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    other = [line for line in lines if not line.startswith("▸ ")]
    assert len(other) == 1, f"expected one error line on stderr, got:\n{proc.stderr}"
    assert other[0].startswith("error: "), proc.stderr
    assert lines[-1] == other[0]
    return other[0]


def breast_cancer_rows(n: int) -> pd.DataFrame:
    """Rows of sklearn's breast-cancer data with the column names raymlops gives them."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame.drop(columns=["target"]).iloc[::37].head(n).reset_index(drop=True)


# --------------------------------------------------------------------------- 6. run → registry


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`raymlops run` on the embedded default, shrunk to 2 trials × 3 epochs."""
    home = tmp_path_factory.mktemp("run")
    proc = raymlops(
        "run",
        "--train-only",
        "--set",
        "tune.num_samples=2",
        "--set",
        "train.epochs=3",
        home=home,
        timeout=400,
    )
    return home, proc


@pytest.mark.slow
def test_run_trains_registers_a_champion_and_predicts(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, proc = trained
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "registered breast-cancer v1 [champion]" in out
    assert "trials:     2 (0 failed)" in out
    assert "sample predictions from breast-cancer v1 (champion, loaded from the registry)" in out
    table = out.split("loaded from the registry):\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[0].split() == ["target", "prediction", "proba_benign", "proba_malignant"]
    assert len(table) == 1 + 5  # header + --samples 5 rows
    for row in table[1:]:
        target, prediction, p_benign, p_malignant = row.split()
        assert {target, prediction} <= {"benign", "malignant"}
        assert float(p_benign) + float(p_malignant) == pytest.approx(1.0, abs=2e-4)
    assert f"mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}" in out
    assert "▸ tuning 2 trials × ≤3 epochs" in proc.stderr
    assert registered_versions(home) == 1


@pytest.mark.long
def test_a_first_version_that_fails_its_gate_is_not_champion(tmp_path: Path) -> None:
    """`raymlops run --train-only` gates a model's first version on its thresholds before
    it is champion: one no model can meet leaves the version registered, never champion,
    and exits 1 (as `train`, `gate` and `retrain` do on a failed verdict) saying so."""
    proc = raymlops(
        "run", "--train-only",
        "--set", "tune.num_samples=1", "--set", "train.epochs=1",
        "--set", 'gate.thresholds={"accuracy": {"min": 0.9999}}',
        home=tmp_path, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert (
        "gate:       no champion before, thresholds only: FAILED (threshold accuracy" in proc.stdout
    )
    assert (
        "v1 failed its gate (threshold accuracy): it stays registered, not champion" in proc.stderr
    )
    assert "(not champion: its first-version gate failed, loaded from the registry)" in proc.stdout
    listed = json.loads(raymlops("models", "list", "--json", home=tmp_path).stdout)
    assert listed[0]["versions"] == 1 and "champion" not in listed[0]["aliases"]
    history = raymlops("models", "history", "breast-cancer", "--json", home=tmp_path)
    actions = [event["action"] for event in json.loads(history.stdout)]
    assert actions == ["register", "gate"], actions  # never champion: nothing to clear


def test_models_list_shows_the_champion(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, _ = trained
    text = raymlops("models", "list", home=home)
    assert text.returncode == 0, text.stderr
    rows = [line.split() for line in text.stdout.splitlines()]
    assert rows[0] == ["MODEL", "VERSIONS", "LATEST", "ALIASES"]
    assert rows[1] == ["breast-cancer", "1", "1", "champion→v1"]

    as_json = raymlops("models", "list", "--json", home=home)
    assert as_json.returncode == 0, as_json.stderr
    models = json.loads(as_json.stdout)
    assert [m["name"] for m in models] == ["breast-cancer"]
    assert models[0]["versions"] == 1
    assert models[0]["latest_version"] == 1
    assert models[0]["aliases"] == {"champion": 1}


def test_models_show_lists_the_version_and_resolves_the_alias(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, _ = trained
    versions = raymlops("models", "show", "breast-cancer", "--json", home=home)
    assert versions.returncode == 0, versions.stderr
    shown = json.loads(versions.stdout)
    assert [v["version"] for v in shown] == [1]
    assert len(shown[0]["dataset_digest"]) == 64
    assert {"test_accuracy", "test_roc_auc", "val_loss"} <= set(shown[0]["metrics"])

    champion = raymlops("models", "show", "breast-cancer", "--version", "champion", home=home)
    assert champion.returncode == 0, champion.stderr
    lines = champion.stdout.splitlines()
    assert lines[0] == "breast-cancer v1  aliases: champion"
    assert f"dataset_digest  {shown[0]['dataset_digest']}" in champion.stdout
    assert f"run_id          {shown[0]['run_id']}" in champion.stdout
    assert "environment:" in champion.stdout and "torch " in champion.stdout


def test_models_show_lists_the_aliases_of_each_version(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, _ = trained
    as_json = raymlops("models", "show", "breast-cancer", "--json", home=home)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)[0]["aliases"] == ["champion"]
    text = raymlops("models", "show", "breast-cancer", home=home)
    assert text.returncode == 0, text.stderr
    version, _created, aliases, *_ = text.stdout.splitlines()[2].split()
    assert (version, aliases) == ("1", "champion")


def test_predict_a_parquet_file_with_the_champion(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:

    home, _ = trained
    rows = breast_cancer_rows(8)
    rows.to_parquet(home / "rows.parquet")
    proc = raymlops(
        "predict", "breast-cancer", "--input", "rows.parquet", "--limit", "6", home=home
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "breast-cancer v1:"
    assert lines[1].split() == ["prediction", "proba_benign", "proba_malignant"]
    printed = [line.split()[1] for line in lines[2:]]
    assert len(printed) == 6
    # The CLI prints what the registered champion predicts for the same rows.
    expected = load_predictor("breast-cancer", "champion", home=home).predict(rows)
    assert printed == list(expected.predictions[:6])


# --------------------------------------------------------------------------- 7. bad input


def _synth(home: Path) -> Path:
    path = home / "data.parquet"
    synth_dataset(str(path), rows=200, features=3, categorical=1, seed=0)
    return path


def _config(home: Path, data: str, label: str = "label", name: str = "bad") -> Path:
    path = home / "pipeline.yaml"
    path.write_text(
        f"name: {name}\n"
        f"data: {{path: '{data}', label: {label}}}\n"
        "train: {epochs: 2}\n"
        "tune: {num_samples: 1}\n"
        f"registry: {{model_name: {name}}}\n"
    )
    return path


def _typo(home: Path) -> tuple[list[str], list[str]]:
    data = _synth(home)
    path = home / "typo.yaml"
    path.write_text(
        f"name: typo\ndata: {{path: '{data}', lable: label}}\nregistry: {{model_name: typo}}\n"
    )
    return ["-c", str(path)], ["data.lable", "unknown key", str(path)]


def _wrong_type(home: Path) -> tuple[list[str], list[str]]:
    return ["--set", "train.epochs=ten"], ["train.epochs", "valid integer", "breast_cancer.yaml"]


def _impossible_value(home: Path) -> tuple[list[str], list[str]]:
    return ["--set", "tune.num_samples=0"], ["tune.num_samples", "greater than or equal to 1"]


def _missing_label(home: Path) -> tuple[list[str], list[str]]:
    config = _config(home, str(_synth(home)), label="diagnosis")
    return ["-c", str(config)], ["label column 'diagnosis' not found", "data.parquet"]


def _empty_csv(home: Path) -> tuple[list[str], list[str]]:
    (home / "empty.csv").write_bytes(b"")
    return ["-c", str(_config(home, "empty.csv"))], ["empty.csv"]


def _corrupt_parquet(home: Path) -> tuple[list[str], list[str]]:
    (home / "corrupt.parquet").write_bytes(b"PAR1 this is not really parquet " * 8)
    return ["-c", str(_config(home, "corrupt.parquet"))], ["cannot read", "corrupt.parquet"]


def _one_class(home: Path) -> tuple[list[str], list[str]]:
    pd.DataFrame({"f0": [float(i) for i in range(60)], "label": [1] * 60}).to_parquet(
        home / "one.parquet"
    )
    config = _config(home, "one.parquet")
    return ["-c", str(config)], ["label column 'label'", "single class"]


def _non_numeric(home: Path) -> tuple[list[str], list[str]]:
    values = [f"{i * 0.5:.1f}" for i in range(40)]
    values[17] = "abc"
    lines = ["f0,f1,label", *(f"{v},{i % 7},{i % 2}" for i, v in enumerate(values))]
    (home / "numbers.csv").write_text("\n".join(lines) + "\n")
    config = _config(home, "numbers.csv")
    return ["-c", str(config)], ["numeric column 'f0'", "'abc'", "numbers.csv"]


FAILS_BEFORE_LOADING_DATA = {"config-typo", "wrong-type", "impossible-value"}
BAD_INPUTS: dict[str, Callable[[Path], tuple[list[str], list[str]]]] = {
    "config-typo": _typo,
    "wrong-type": _wrong_type,
    "impossible-value": _impossible_value,
    "missing-label": _missing_label,
    "empty-csv": _empty_csv,
    "corrupt-parquet": _corrupt_parquet,
    "one-class-label": _one_class,
    "non-numeric-value": _non_numeric,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_registers_nothing(tmp_path: Path, case: str) -> None:
    args, fragments = BAD_INPUTS[case](tmp_path)
    proc = raymlops("train", *args, home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    error = the_error_line(proc)
    if case in FAILS_BEFORE_LOADING_DATA:
        assert proc.stderr == error + "\n"  # not even a progress line
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in {error!r}"
    assert proc.stdout == ""
    assert registered_versions(tmp_path) == 0
    assert not (tmp_path / "tune").exists()


def test_bad_input_to_run_leaves_the_registry_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    proc = raymlops("run", "-c", str(_config(tmp_path, "empty.csv")), home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "empty.csv" in the_error_line(proc)
    listed = raymlops("models", "list", "--json", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


# --------------------------------------------------------------------------- 8. config, data, help


def test_config_show_round_trips_through_validate(tmp_path: Path) -> None:
    shown = raymlops("config", "show", "--set", "tune.num_samples=3", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    data = yaml.safe_load(shown.stdout)
    assert data["name"] == "breast-cancer"
    assert data["data"]["path"] == "sklearn:breast_cancer"
    assert data["tune"]["num_samples"] == 3
    assert data["train"]["optimizer"] == "adamw"  # a default, filled in
    (tmp_path / "shown.yaml").write_text(shown.stdout)

    valid = raymlops("config", "validate", "shown.yaml", home=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.strip() == (
        "shown.yaml: valid (pipeline 'breast-cancer', model 'breast-cancer')"
    )
    again = raymlops("config", "show", "-c", "shown.yaml", home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == shown.stdout


def test_config_validate_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ndata: {path: d.parquet, label: y}\n"
        "train: {epochs: 5, learning_rat: 0.1}\nregistry: {model_name: x}\n"
    )
    proc = raymlops("config", "validate", str(bad), home=tmp_path)
    assert proc.returncode == 2
    error = the_error_line(proc)
    assert "train.learning_rat" in error and str(bad) in error
    assert proc.stdout == ""


def test_data_synth_then_profile(tmp_path: Path) -> None:
    synth = raymlops(
        "data", "synth", "--rows", "1000", "--features", "4", "--categorical", "1",
        "--out", "x.parquet", home=tmp_path,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    assert "wrote 1000 rows × 4 numeric + 1 categorical → x.parquet" in synth.stdout
    assert pd.read_parquet(tmp_path / "x.parquet").shape == (1000, 1 + 4 + 1 + 1)

    profile = raymlops("data", "profile", "x.parquet", "--label", "label", home=tmp_path)
    assert profile.returncode == 0, profile.stderr
    digest = describe_path(str(tmp_path / "x.parquet"), "label").digest
    assert f"digest:  sha256:{digest}" in profile.stdout
    assert "rows:    1000" in profile.stdout
    assert "task:    classification (label 'label', classes 0, 1)" in profile.stdout
    columns = {line.split()[0]: line.split()[1:3] for line in profile.stdout.splitlines()[5:]
               if line.startswith("  ")}  # fmt: skip
    assert columns["label"][1] == "label"
    assert columns["c0"][1] == "feature"
    assert columns["f3"][1] == "feature"


def _command_paths() -> list[tuple[str, ...]]:
    from raymlops.cli.main import cli

    paths: list[tuple[str, ...]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        paths.append(path)
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                walk(sub, (*path, name))

    walk(cli, ())
    return paths


def _is_group(path: tuple[str, ...]) -> bool:
    from raymlops.cli.main import cli

    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return isinstance(command, click.Group)


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "raymlops")
def test_help_exits_0_and_shows_an_example(tmp_path: Path, path: tuple[str, ...]) -> None:
    proc = raymlops(*path, "--help", home=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: raymlops {' '.join(path)}".rstrip())
    if _is_group(path):
        assert "Commands:" in proc.stdout
    assert "Example" in proc.stdout


def test_an_unexpected_error_in_a_ray_actor_is_shown_by_its_cause_on_one_line() -> None:
    from ray.exceptions import RayTaskError

    from raymlops.cli.base import _one_line

    cause = RuntimeError("HAProxy crashed during startup: [NOTICE] starting\n[ALERT] cannot bind")
    wrapped = RayTaskError(
        "ready", "Traceback …", cause, proctitle="ray::HAProxyManager.ready", pid=7, ip="10.0.0.1"
    ).as_instanceof_cause()
    line = _one_line(wrapped)
    assert line == (
        "RuntimeError in ray::HAProxyManager.ready(): HAProxy crashed during startup: "
        "[NOTICE] starting | [ALERT] cannot bind"
    )
    assert _one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert _one_line(RuntimeError("x" * 1000)).startswith("RuntimeError: x")
    assert len(_one_line(RayTaskError("f", "", RuntimeError("y" * 1000), "p", 1, "h"))) < 450

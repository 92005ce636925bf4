"""The layer contract (tests/contract.py) holds for the source, and it catches each kind of
forbidden import when one is planted in a small tree of the same shape."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the checker is imported as tests.contract
    sys.path.insert(0, str(REPO))

from tests.contract import LAYERS, violations  # noqa: E402


def test_the_source_keeps_the_layer_contract() -> None:
    assert violations(REPO) == []


def test_every_capability_package_has_a_layer_and_says_what_it_may_import() -> None:
    packages = {p.name for p in (REPO / "raymlops").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)
    for name in packages:
        doc = (REPO / "raymlops" / name / "__init__.py").read_text()
        assert "Layer " in doc and "import" in doc, name


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package `raymlops` under tmp_path: every capability package (empty) plus `files`."""
    root = tmp_path / "src"
    (root / "raymlops").mkdir(parents=True)
    (root / "raymlops" / "__init__.py").write_text("")
    for name in LAYERS:
        (root / "raymlops" / name).mkdir()
        (root / "raymlops" / name / "__init__.py").write_text("")
    for path, text in files.items():
        target = root / "raymlops" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return root


CLEAN = {
    "core/errors.py": "class Oops(Exception): ...\n",
    "model/predictor.py": "from raymlops.core.errors import Oops\n",
    "registry/store.py": "from raymlops.model.predictor import Oops\n",
    "loop/gate.py": "from raymlops.registry import store\n",
    "cli/main.py": "import click\nfrom raymlops.loop.gate import store\n",
}


def test_a_tree_that_only_imports_downward_passes(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        (
            {"core/config.py": "from raymlops.loop.gate import store\n"},
            "raymlops.core.config -> raymlops.loop.gate: upward (core may not import loop)",
        ),
        (  # hidden in a function
            {"model/features.py": "def f():\n    from raymlops.registry.store import Oops\n"},
            "raymlops.model.features -> raymlops.registry.store: upward "
            "(model may not import registry)",
        ),
        (  # same layer, other package
            {"serve/app.py": "from raymlops.train import loop\n", "train/loop.py": ""},
            "raymlops.serve.app -> raymlops.train.loop: sideways (serve may not import train)",
        ),
        (  # a cycle inside one package, one side behind a function-level import
            {
                "loop/cards.py": "from raymlops.loop.gate import store\n",
                "loop/gate.py": "def g():\n    from raymlops.loop import cards\n",
            },
            "cycle: raymlops.loop.cards <-> raymlops.loop.gate",
        ),
        (
            {"loop/x.py": "from raymlops.registry.store import _secret\n"},
            "raymlops.loop.x -> raymlops.registry.store: private _secret from another package",
        ),
        (
            {"batch/run.py": "import click\n"},
            "raymlops.batch.run -> click: click outside cli",
        ),
        (
            {"train/search.py": "def f():\n    import raymlops\n"},
            "raymlops.train.search -> raymlops: imports raymlops, which is outside the layers",
        ),
        (
            {"stray.py": "from raymlops.core.errors import Oops\n"},
            "raymlops.stray -> raymlops.core.errors: raymlops.stray is in no capability package",
        ),
    ],
)
def test_each_kind_of_forbidden_import_is_caught(
    tmp_path: Path, planted: dict[str, str], expected: str
) -> None:
    found = violations(_tree(tmp_path, {**CLEAN, **planted}))
    assert expected in found, found

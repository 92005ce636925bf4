"""`raymlops serve canary/promote/rollback/stop --json` against a real endpoint: each prints
one JSON document on stdout (the deployed status; for stop, what was stopped), and
`serve canary -m models:/NAME@ALIAS` puts the version the alias names on the canary.

Reuses test_serving's `serving()` (Ray with 2 CPUs in this process, the registry, the test
model's application on a free port). Long: it starts Ray and Serve.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from raymlops.cli.main import cli
from tests.integration.test_serving import MODEL, Served, serving

pytestmark = [pytest.mark.integration, pytest.mark.long]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory, "serve-json") as app:
        yield app


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # the whole of stdout is one document


def test_serve_commands_print_json(served: Served) -> None:
    config_file = served.home / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(served.config.model_dump(mode="json")))
    runner = CliRunner()
    base = ["-c", str(config_file), "--home", str(served.home)]

    # -m with an alias: the canary holds the version the alias points to now.
    served.registry.set_alias(MODEL, "candidate", 2, action="set", reason="test")
    uri = f"models:/{MODEL}@candidate"
    canary = _json(
        runner.invoke(cli, ["serve", "canary", *base, "-m", uri, "--percent", "5", "--json"])
    )
    assert (canary["app"], canary["champion"], canary["challenger"]) == (MODEL, 1, 2)
    promoted = _json(runner.invoke(cli, ["serve", "promote", *base, "--reason", "t", "--json"]))
    assert (promoted["champion"], promoted["challenger"]) == (2, None)
    rolled = _json(runner.invoke(cli, ["serve", "rollback", *base, "--reason", "t", "--json"]))
    assert (rolled["champion"], rolled["challenger"]) == (1, None)

    stopped = _json(runner.invoke(cli, ["serve", "stop", *base, "--json"]))
    assert stopped == {"stopped": [f"application {MODEL}"]}
    again = _json(runner.invoke(cli, ["serve", "stop", *base, "--json"]))
    assert again == {"stopped": []}

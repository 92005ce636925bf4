"""The configuration reference generated from the pydantic field descriptions
(raymlops.core.config_docs, `raymlops config docs`), and README's table kept equal to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig
from raymlops.core.config_docs import (
    TABLE_BEGIN,
    TABLE_END,
    config_reference,
    config_table,
    replace_table,
    table_in,
)
from raymlops.core.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_holds_the_generated_table() -> None:
    assert table_in(README.read_text(encoding="utf-8"), "README.md") == config_table(), (
        "README's configuration table differs from the config's field descriptions: "
        "run `raymlops config docs --readme README.md`"
    )


def test_the_table_has_every_top_level_key_with_its_description() -> None:
    table = config_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(PipelineConfig.model_fields)
    assert "| `name` | Pipeline name; names the Tune experiment. Required. |" in rows
    assert any(row.startswith("| `description` | What this model is for") for row in rows)
    # A section lists its keys, and one level of sub-sections spelled out.
    serve = next(row for row in rows if row.startswith("| `serve` |"))
    assert "`autoscaling` (`min_replicas`, `initial_replicas`" in serve
    # What Markdown would take for HTML is escaped outside code spans.
    storage = next(row for row in rows if row.startswith("| `storage` |"))
    assert "&lt;storage&gt;/runs" in storage and "<storage>" not in storage


def test_the_reference_has_every_key_with_a_description() -> None:
    lines = config_reference().splitlines()
    assert lines[:2] == ["| key | default | description |", "| --- | --- | --- |"]
    rows = {line.split("`")[1]: line for line in lines[2:]}
    for key in (
        "name",
        "data.split.seed",
        "serve.prediction_log.max_buffered_rows",
        "tune.search_space.<name>.low",
        "gate.invariance[].column",
    ):
        assert key in rows, key
    assert rows["data.split.seed"].startswith("| `data.split.seed` | `42` | Seed of the shuffle")
    assert rows["name"].startswith("| `name` | required |")
    for key, row in rows.items():
        assert row.rstrip(" |").split(" | ")[-1].strip(), f"{key} has no description"


def test_replace_table_rewrites_only_between_the_markers() -> None:
    text = f"intro\n\n{TABLE_BEGIN}\n| old |\n{TABLE_END}\n\nafter\n"
    new = replace_table(text, "| new |\n")
    assert new == f"intro\n\n{TABLE_BEGIN}\n| new |\n{TABLE_END}\n\nafter\n"
    assert table_in(new) == "| new |\n"
    assert replace_table(new, "| new |\n") == new
    with pytest.raises(ConfigError, match="no '<!-- config-table"):
        replace_table("no markers here", "| new |\n", "NOTES.md")


def test_config_docs_prints_the_table_or_rewrites_a_file(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["config", "docs"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == config_table()
    every = runner.invoke(cli, ["config", "docs", "--all"])
    assert every.exit_code == 0 and every.output == config_reference()

    doc = tmp_path / "DOC.md"
    doc.write_text(f"# Doc\n\n{TABLE_BEGIN}\n| stale |\n{TABLE_END}\n", encoding="utf-8")
    result = runner.invoke(cli, ["config", "docs", "--readme", str(doc)])
    assert result.exit_code == 0, result.output
    assert "updated" in result.output
    assert table_in(doc.read_text(encoding="utf-8")) == config_table()
    again = runner.invoke(cli, ["config", "docs", "--readme", str(doc)])
    assert "unchanged" in again.output

    # README holds the top-level table (test_readme_holds_the_generated_table): --all
    # cannot go there.
    mixed = runner.invoke(cli, ["config", "docs", "--all", "--readme", str(doc)])
    assert mixed.exit_code == 2 and "--all" in mixed.output
    assert table_in(doc.read_text(encoding="utf-8")) == config_table()

    doc.write_text("# No markers\n", encoding="utf-8")
    refused = runner.invoke(cli, ["config", "docs", "--readme", str(doc)])
    assert refused.exit_code != 0 and "config-table" in refused.output

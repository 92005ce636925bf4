"""The prediction log writes each request's numeric features from the block the request
parser made (one concatenation per flush), and from separate columns otherwise; both give
the same rows, in request order."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from raymlops.serve.prediction_log import LogChunk, PredictionLogWriter, read_log
from raymlops.serve.schema import RequestSchema

NUMERIC = ["a", "b", "c"]


def _chunk(request_id: str, columns: dict[str, np.ndarray]) -> LogChunk:
    rows = len(columns["a"])
    return LogChunk(
        request_id, time.time(), 1, "champion", 1.0, columns, np.arange(rows, dtype=float), None
    )


@pytest.mark.parametrize("numeric", [NUMERIC, ["a"]])
def test_parsed_blocks_and_plain_columns_give_the_same_rows(
    tmp_path: Path, numeric: list[str]
) -> None:
    schema = RequestSchema(numeric, ["colour"])
    writer = PredictionLogWriter(str(tmp_path / "log"), "m", flush_interval_s=60)
    writer.register_version(1, numeric, ["colour"], None)
    requests = {
        "one": [{**{n: 10 * i + 1 for i, n in enumerate(numeric)}, "colour": "red"}],
        "three": [
            {**{n: 100 * r + i for i, n in enumerate(numeric)}, "colour": "blue"} for r in range(3)
        ],
        "null": [  # a null takes the parser's column-by-column path: no shared block
            {**{n: 7.5 for n in numeric}, "a": None, "colour": None},
            {**{n: -1.0 for n in numeric}, "colour": "red"},
        ],
    }
    expected: dict[str, list[object]] = {n: [] for n in [*numeric, "colour"]}
    for request_id, records in requests.items():
        parsed = schema.parse(json.dumps({"instances": records}).encode())
        writer.append(_chunk(request_id, parsed.columns))
        for name in expected:
            expected[name] += [record[name] for record in records]
    # Columns picked from a block in another order than the features: never read as one.
    block = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])[: len(numeric)]
    shuffled = {name: block[len(numeric) - 1 - j] for j, name in enumerate(numeric)}
    writer.append(_chunk("shuffled", {**shuffled, "colour": np.array(["x", "y"], dtype=object)}))
    for j, name in enumerate(numeric):
        expected[name] += block[len(numeric) - 1 - j].tolist()
    expected["colour"] += ["x", "y"]

    assert writer.flush() == 8
    table = read_log(str(tmp_path / "log" / "m"))
    assert table.column("request_id").to_pylist() == (
        ["one"] + ["three"] * 3 + ["null"] * 2 + ["shuffled"] * 2
    )
    for name, values in expected.items():
        assert table.column(name).to_pylist() == values, name

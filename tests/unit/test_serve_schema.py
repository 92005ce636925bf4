"""Request validation of the serving endpoint: every bad input gets its status and the field
named; good inputs become the columns `Predictor.predict` reads."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from raymlops.model.features import Preprocessor
from raymlops.serve.schema import RequestError, RequestSchema


@pytest.fixture
def schema() -> RequestSchema:
    return RequestSchema(["a", "b"], ["colour"], allow_missing=True, vocab={"colour": ["red"]})


def _body(rows: Any) -> bytes:
    return json.dumps({"instances": rows}).encode()


def _error(schema: RequestSchema, body: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        schema.parse(body)
    return info.value


def test_valid_rows_become_columns(schema: RequestSchema) -> None:
    parsed = schema.parse(
        _body(
            [
                {"a": 1, "b": 2.5, "colour": "red"},
                {"a": None, "b": -1e3, "colour": 7},
                {"a": 0.5, "b": 3.0, "colour": None},
            ]
        )
    )
    assert parsed.rows == 3
    np.testing.assert_array_equal(parsed.columns["a"], [1.0, np.nan, 0.5])
    assert parsed.columns["a"].dtype == np.float64
    np.testing.assert_array_equal(parsed.columns["b"], [2.5, -1000.0, 3.0])
    assert parsed.columns["colour"].tolist() == ["red", "7", None]
    assert parsed.names == ["a", "b", "colour"]


def test_columns_feed_the_preprocessor_like_records() -> None:
    prep = Preprocessor(
        numeric=["a"], categorical=["c"], task="classification", impute={"a": 1.0},
        mean={"a": 0.0}, std={"a": 1.0}, vocab={"c": ["x", "3"]}, classes=["0", "1"],
    )  # fmt: skip
    schema = RequestSchema.from_preprocessor(prep)
    records = [{"a": 2.0, "c": "x"}, {"a": None, "c": 3}, {"a": 4, "c": None}]
    parsed = schema.parse(_body(records))
    np.testing.assert_array_equal(prep.transform(parsed.columns), prep.transform(records))


@pytest.mark.parametrize(
    ("body", "status", "field", "text"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 422, None, "JSON object"),
        (b"{}", 422, "instances", "missing field 'instances'"),
        (b'{"instances": [], "extra": 1}', 422, "extra", "unknown field 'extra'"),
        (b'{"instances": {"a": 1}}', 422, "instances", "must be a list"),
        (b'{"instances": []}', 422, "instances", "is empty"),
        (b'{"instances": [3]}', 422, "instances[0]", "must be an object"),
    ],
)
def test_malformed_bodies(
    schema: RequestSchema, body: bytes, status: int, field: str | None, text: str
) -> None:
    err = _error(schema, body)
    assert (err.status, err.field) == (status, field)
    assert text in err.message


@pytest.mark.parametrize(
    ("row", "field", "text"),
    [
        ({"b": 1, "colour": "red"}, "instances[1].a", "missing feature 'a'"),
        ({"a": 1, "b": 1, "colour": "red", "z": 0}, "instances[1].z", "unknown feature 'z'"),
        ({"a": "1.5", "b": 1, "colour": "red"}, "instances[1].a", "must be a number"),
        ({"a": True, "b": 1, "colour": "red"}, "instances[1].a", "must be a number"),
        ({"a": [1], "b": 1, "colour": "red"}, "instances[1].a", "must be a number"),
        ({"a": 1, "b": 1, "colour": 1.5}, "instances[1].colour", "must be a string"),
        ({"a": 1, "b": 1, "colour": {"x": 1}}, "instances[1].colour", "must be a string"),
    ],
)
def test_bad_rows_name_the_field(
    schema: RequestSchema, row: dict[str, Any], field: str, text: str
) -> None:
    good = {"a": 1, "b": 2, "colour": "red"}
    err = _error(schema, _body([good, row]))
    assert err.status == 422
    assert err.field == field
    assert text in err.message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_rejected(schema: RequestSchema, literal: str) -> None:
    body = b'{"instances": [{"a": 1, "b": %s, "colour": "red"}]}' % literal.encode()
    err = _error(schema, body)
    assert (err.status, err.field) == (422, "instances[0].b")
    assert "finite" in err.message


def test_non_finite_next_to_null(schema: RequestSchema) -> None:
    body = (
        b'{"instances": [{"a": null, "b": 1, "colour": "red"}, '
        b'{"a": NaN, "b": 1, "colour": "red"}]}'
    )
    assert _error(schema, body).field == "instances[1].a"


def test_huge_integer_is_not_finite(schema: RequestSchema) -> None:
    body = _body([{"a": 10**400, "b": 1, "colour": "red"}])
    assert _error(schema, body).field == "instances[0].a"


def test_nulls_refused_when_missing_values_are_not_allowed() -> None:
    strict = RequestSchema(["a"], ["c"], allow_missing=False)
    for row, field in (({"a": None, "c": "x"}, "a"), ({"a": 1, "c": None}, "c")):
        err = _error(strict, _body([row]))
        assert err.field == f"instances[0].{field}"
        assert "null" in err.message


def test_long_values_are_shortened_in_messages(schema: RequestSchema) -> None:
    err = _error(schema, _body([{"a": "x" * 500, "b": 1, "colour": "red"}]))
    assert len(err.message) < 120


def test_describe_and_json_schema(schema: RequestSchema) -> None:
    kinds = {f["name"]: f["kind"] for f in schema.describe()}
    assert kinds == {"a": "numeric", "b": "numeric", "colour": "categorical"}
    described = {f["name"]: f for f in schema.describe()}
    assert described["colour"]["known_values"] == ["red"]
    document = schema.json_schema()
    record = document["properties"]["instances"]["items"]
    assert record["required"] == ["a", "b", "colour"]
    assert record["additionalProperties"] is False
    assert document["properties"]["instances"]["minItems"] == 1


def test_error_to_dict() -> None:
    assert RequestError(422, "bad", "instances[0].a").to_dict() == {
        "error": "bad",
        "field": "instances[0].a",
    }
    assert RequestError(400, "bad").to_dict() == {"error": "bad"}

"""The request schema of a served model, derived from its fitted preprocessing.

`RequestSchema.parse(body)` turns a JSON body `{"instances": [{feature: value, …}, …]}` into
columns ready for `Predictor.predict` (a dict of numpy arrays) or raises `RequestError` with
the HTTP status and the offending field. Validation is columnar (one pass per feature over
all rows, type checks done with set operations in C) because it runs on every request.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
from pydantic_core import from_json

from raymlops.model.features import Preprocessor

__all__ = ["ParsedRequest", "RequestError", "RequestSchema"]

_NUMBER_TYPES = frozenset({int, float})
_NONE = type(None)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


class RequestError(Exception):
    """A request the endpoint refuses: HTTP `status`, a one-line message, the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass
class ParsedRequest:
    """Validated rows as columns: numeric features float64 (NaN = null), categorical features
    object arrays of str or None; `rows` is the row count, `records` the rows as received and
    `names` the feature names they were checked against."""

    columns: dict[str, np.ndarray]
    rows: int
    records: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


@dataclass
class RequestSchema:
    """Feature names and kinds of one model version; what `/predict` accepts."""

    numeric: list[str]
    categorical: list[str]
    allow_missing: bool = True
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [*self.numeric, *self.categorical]
        self._name_set = frozenset(self.names)
        getter = itemgetter(*self.numeric) if self.numeric else None
        if len(self.numeric) == 1:
            self._pick: Any = lambda row: (row[self.numeric[0]],)
        else:
            self._pick = getter

    @classmethod
    def from_preprocessor(cls, prep: Preprocessor, allow_missing: bool = True) -> RequestSchema:
        return cls(list(prep.numeric), list(prep.categorical), allow_missing, dict(prep.vocab))

    def describe(self) -> list[dict[str, Any]]:
        """The schema as JSON: one entry per feature with its kind and accepted values."""
        out: list[dict[str, Any]] = []
        for name in self.numeric:
            out.append(
                {"name": name, "kind": "numeric", "type": "number", "nullable": self.allow_missing}
            )
        for name in self.categorical:
            out.append(
                {
                    "name": name,
                    "kind": "categorical",
                    "type": "string",
                    "nullable": self.allow_missing,
                    "known_values": self.vocab.get(name, []),
                }
            )
        return out

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the request body (shown in the OpenAPI docs)."""
        properties: dict[str, Any] = {}
        for name in self.numeric:
            kind: Any = {"type": "number"}
            properties[name] = {"anyOf": [kind, {"type": "null"}]} if self.allow_missing else kind
        for name in self.categorical:
            kind = {"type": ["string", "integer"]}
            properties[name] = {"anyOf": [kind, {"type": "null"}]} if self.allow_missing else kind
        record = {
            "type": "object",
            "properties": properties,
            "required": list(self.names),
            "additionalProperties": False,
        }
        return {
            "type": "object",
            "properties": {"instances": {"type": "array", "minItems": 1, "items": record}},
            "required": ["instances"],
            "additionalProperties": False,
        }

    # ------------------------------------------------------------------ parsing
    def parse(self, body: bytes) -> ParsedRequest:
        """Validate a JSON body; raise RequestError (400 malformed, 422 invalid)."""
        try:
            data = from_json(body)  # pydantic-core's parser: 3-4x the stdlib's speed
        except ValueError as exc:
            raise RequestError(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RequestError(422, 'body must be a JSON object {"instances": [...]}')
        if "instances" not in data:
            raise RequestError(422, "missing field 'instances'", "instances")
        extra = [k for k in data if k != "instances"]
        if extra:
            raise RequestError(422, f"unknown field '{extra[0]}'", str(extra[0]))
        rows = data["instances"]
        if not isinstance(rows, list):
            raise RequestError(422, "'instances' must be a list of records", "instances")
        if not rows:
            raise RequestError(422, "'instances' is empty", "instances")
        return self.parse_records(rows)

    def parse_records(self, rows: list[Any]) -> ParsedRequest:
        """Validate a list of records (mappings of feature -> value)."""
        names = self._name_set
        for i, row in enumerate(rows):
            if type(row) is not dict:
                raise RequestError(422, f"instances[{i}] must be an object", f"instances[{i}]")
            if row.keys() != names:
                self._key_error(i, row)
        columns: dict[str, np.ndarray] = {}
        numeric = self._numeric_block(rows)
        if numeric is not None:
            for j, name in enumerate(self.numeric):
                columns[name] = numeric[j]
        else:  # nulls, or a bad value: column by column, naming the first bad field
            for name in self.numeric:
                columns[name] = self._numeric_column(name, [row[name] for row in rows])
        for name in self.categorical:
            columns[name] = self._categorical_column(name, [row[name] for row in rows])
        return ParsedRequest(columns, len(rows), rows, self.names)

    def _numeric_block(self, rows: list[dict[str, Any]]) -> np.ndarray | None:
        """All numeric features at once, as a (features, rows) array, when every value is a
        finite int or float (the common case: one type check and one conversion per
        request instead of one per feature); None sends the request down the slow path."""
        if not self.numeric:
            return None
        pick = self._pick
        matrix = [pick(row) for row in rows]
        if not set(map(type, chain.from_iterable(matrix))) <= _NUMBER_TYPES:
            return None
        try:
            array = np.array(matrix, dtype=np.float64)
        except OverflowError:
            return None
        if not np.isfinite(array).all():
            return None
        return np.ascontiguousarray(array.T)

    def _key_error(self, i: int, row: dict[str, Any]) -> None:
        missing = [n for n in self.names if n not in row]
        if missing:
            where = f"instances[{i}].{missing[0]}"
            raise RequestError(422, f"instances[{i}]: missing feature '{missing[0]}'", where)
        unknown = next(k for k in row if k not in self._name_set)
        raise RequestError(
            422, f"instances[{i}]: unknown feature '{unknown}'", f"instances[{i}].{unknown}"
        )

    def _numeric_column(self, name: str, values: list[Any]) -> np.ndarray:
        kinds = set(map(type, values))
        if kinds <= _NUMBER_TYPES:
            try:
                array = np.array(values, dtype=np.float64)
            except OverflowError:  # an integer beyond float range: found below
                array = None
            if array is not None:
                if not np.isfinite(array).all():
                    i = int(np.flatnonzero(~np.isfinite(array))[0])
                    raise self._bad(name, i, values[i], "must be a finite number (NaN/Infinity)")
                return array
        for i, value in enumerate(values):
            kind = type(value)
            if kind is _NONE:
                if not self.allow_missing:
                    raise self._bad(name, i, value, "must not be null")
            elif kind not in _NUMBER_TYPES:
                raise self._bad(name, i, value, "must be a number")
            elif not _finite(value):
                raise self._bad(name, i, value, "must be a finite number (NaN/Infinity)")
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def _categorical_column(self, name: str, values: list[Any]) -> np.ndarray:
        kinds = set(map(type, values))
        if kinds == {str}:
            return np.array(values, dtype=object)
        out: list[str | None] = []
        for i, value in enumerate(values):
            kind = type(value)
            if kind is str:
                out.append(value)
            elif kind is int:
                out.append(str(value))  # the preprocessor spells integer categories so
            elif kind is float and math.isfinite(value) and value == int(value):
                out.append(str(int(value)))
            elif kind is _NONE:
                if not self.allow_missing:
                    raise self._bad(name, i, value, "must not be null")
                out.append(None)
            else:
                raise self._bad(name, i, value, "must be a string")
        return np.array(out, dtype=object)

    @staticmethod
    def _bad(name: str, i: int, value: Any, what: str) -> RequestError:
        shown = json.dumps(value) if not isinstance(value, float) else repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        where = f"instances[{i}].{name}"
        return RequestError(422, f"{where} {what}, got {shown}", where)

"""Preprocessor.unseen_categories: the categorical values `transform` maps to the unknown
bucket, found per column and row (what serving turns into per-row warnings and a metric)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa

from raymlops.core.config import FeaturesConfig
from raymlops.model.features import Preprocessor
from tests.unit.test_features import _fit, _roles


def test_values_outside_the_vocabulary_are_found_by_row() -> None:
    prep = _fit()  # vocabulary x, y, z ('rare' was seen once, below min_frequency 2)
    rows = [
        {"a": 1.0, "b": 0.0, "colour": "y"},
        {"a": 1.0, "b": 0.0, "colour": "purple"},  # never seen
        {"a": 1.0, "b": 0.0, "colour": None},  # missing: imputed, not unseen
        {"a": 1.0, "b": 0.0, "colour": "rare"},  # outside the vocabulary too
        {"a": 1.0, "b": 0.0, "colour": "x"},
    ]
    found = prep.unseen_categories(rows)
    assert list(found) == ["colour"]
    indices, values = found["colour"]
    assert indices.tolist() == [1, 3]
    assert values == ["purple", "rare"]
    # The rows it names are exactly those transform put in the unknown bucket, but for the
    # missing one.
    unknown = prep.transform(rows)[:, prep.output_names.index("colour=<unknown>")]
    assert np.flatnonzero(unknown).tolist() == [1, 2, 3]
    # The same from numpy columns of strings and nulls (what serving parses).
    columns = {k: np.array([r[k] for r in rows], dtype=object) for k in ("a", "b", "colour")}
    indices, values = prep.unseen_categories(columns)["colour"]
    assert (indices.tolist(), values) == ([1, 3], ["purple", "rare"])
    fixed = np.array(["x", "purple"])  # a fixed-width string column
    indices, values = prep.unseen_categories({**columns, "colour": fixed})["colour"]
    assert (indices.tolist(), values) == ([1], ["purple"])


def test_nothing_unseen_gives_an_empty_mapping_for_every_input_type() -> None:
    prep = _fit()
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, 1.0], "colour": ["x", None]})
    for data in (
        frame,
        pa.Table.from_pandas(frame),
        frame.to_dict(orient="records"),
        {"a": np.array([1.0, 2.0]), "b": np.array([0.0, 1.0]), "colour": np.array(["x", None])},
    ):
        assert prep.unseen_categories(data) == {}


def test_integer_categories_are_spelled_as_transform_reads_them() -> None:
    table = pa.table(
        {
            "a": [1.0, 2.0, 3.0],
            "b": [0.0, 0.0, 1.0],
            "colour": pa.array([1, 2, 1], pa.int64()),
            "label": ["no", "yes", "no"],
        }
    )
    prep = Preprocessor.fit(table, _roles(), FeaturesConfig())
    # 2.0 from a float column reads "2" (seen); 7 is not.
    served = {"a": np.zeros(3), "b": np.zeros(3), "colour": pd.Series([2.0, 7.0, np.nan])}
    indices, values = prep.unseen_categories(served)["colour"]
    assert (indices.tolist(), values) == ([1], ["7"])


def test_a_batch_s_warnings_go_to_the_rows_of_their_own_requests() -> None:
    """Serving checks a whole @serve.batch at once (requests of 2, 1 and 3 rows here) and
    hands each request the warnings of its own rows."""
    from raymlops.serve.app_shared import _Loaded
    from raymlops.serve.ingress import _unseen_warnings
    from raymlops.serve.schema import RequestSchema

    prep = _fit()
    loaded = _Loaded(
        1, SimpleNamespace(preprocessor=prep), RequestSchema.from_preprocessor(prep, True), None, {}
    )
    colour = ["x", "purple", "y", None, "teal", "x"]
    columns = {
        "a": np.zeros(6),
        "b": np.zeros(6),
        "colour": np.array(colour, dtype=object),
    }
    assert _unseen_warnings(loaded, columns, [2, 1, 3]) == [
        [None, {"unseen_category": {"colour": "purple"}}],
        None,
        [None, {"unseen_category": {"colour": "teal"}}, None],
    ]
    columns["colour"] = np.array(["x", "y", None, "z", "x", "y"], dtype=object)
    assert _unseen_warnings(loaded, columns, [2, 1, 3]) == [None, None, None]

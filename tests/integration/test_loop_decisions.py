"""The closed loop decides right, on five scenarios of `benchmarks/loop_decisions.py` (long):
one full monitor → retrain → gate → canary → promote/refuse cycle each against one live
endpoint (real local Ray, Ray Serve, HTTP, the MLflow SQLite registry under tmp_path), scored
against 20,000 rows of ground truth the loop never sees.

- concept drift with delayed labels: decay triggers, the candidate beats champion v1 on the
  held-out fresh rows and on the truth, and is promoted;
- drift in a feature the model ignores: the weighted verdict does not call drift, nothing
  retrains;
- a sabotaged search (learning rate 1e-7): the gate refuses the candidate;
- label noise (40% of the recent labels flipped, the fresh rows' too): the candidate wins on
  log loss against the noisy labels, but its ROC AUC guard refuses it — and the truth, on
  clean labels, says it is worse;
- a candidate that fails on live traffic: serving rolls its canary back, the failed requests
  fall back to the champion, so no request of the traffic fails.

Also a unit test (default run) of the bug the suite found: delayed labels could not be joined
to a prediction-log block whose string columns are dictionaries that differ per file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from benchmarks.loop_decisions import SCENARIOS, CycleResult, Suite, open_suite, summary
from tests.integration.ray_support import local_ray

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """Champion v1 served on a local Ray of 2 CPUs (see `open_suite`)."""
    # Replicas leave within 1 s of `serve.delete`/shutdown instead of 5 (no traffic then).
    with (
        local_ray(env={"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}),
        open_suite(tmp_path_factory.mktemp("loop-decisions")) as opened,
    ):
        yield opened


def _decided(suite: Suite, name: str) -> CycleResult:
    result = suite.run(SCENARIOS[name])
    assert result.failed_requests == 0, (name, result.requests, result.steps)
    assert not result.wrong_promotion, result.row()
    assert result.as_expected, (result.row(), result.steps)
    return result


@pytest.mark.long
def test_the_loop_promotes_refuses_and_rolls_back_as_the_truth_says(suite: Suite) -> None:
    concept = _decided(suite, "concept-a")
    assert concept.decision == "promote" and concept.should_promote, concept.row()
    assert concept.candidate_loss is not None
    assert concept.candidate_loss < concept.champion_loss - 0.1  # the truth agrees, by far
    assert "roc_auc guard" in concept.reason and "(passed" in concept.reason, concept.row()
    assert suite.registry.alias_target("loop-decisions", "champion") == concept.candidate

    ignored = _decided(suite, "ignored-a")
    assert ignored.decision == "no retrain" and ignored.candidate is None, ignored.row()
    assert "n0" in ignored.reason  # the feature drifted, but carries no weight

    sabotaged = _decided(suite, "sabotage-a")
    assert sabotaged.decision == "refuse" and sabotaged.candidate is not None
    assert "gate failed" in sabotaged.reason, sabotaged.row()
    assert sabotaged.candidate_loss is not None
    assert sabotaged.candidate_loss > sabotaged.champion_loss  # worse on the truth too

    noise = _decided(suite, "noise-a")
    assert noise.decision == "refuse" and noise.candidate is not None, noise.row()
    assert "gate failed: log_loss gain" in noise.reason, noise.row()  # won on noisy labels…
    assert "roc_auc guard" in noise.reason and "(failed" in noise.reason  # …refused by the guard
    assert noise.candidate_loss is not None and noise.candidate_loss > noise.champion_loss

    errors = _decided(suite, "errors-a")
    assert errors.decision == "roll back" and "error rate" in errors.reason, errors.row()
    assert suite.registry.alias_target("loop-decisions", "champion") == 1
    counts = summary([concept, ignored, sabotaged, noise, errors])
    assert counts["wrong_promotions"] == counts["missed_improvements"] == 0, counts
    assert counts["requests"] > 5 * 600  # every cycle's traffic was counted


def test_labels_join_a_log_block_whose_dictionaries_differ_per_file() -> None:
    from raymlops.monitor.summary import _join_labels, _Plan

    def dictionary(values: list[str], levels: list[str]) -> pa.DictionaryArray:
        codes = pa.array([levels.index(v) for v in values], pa.int32())
        return pa.DictionaryArray.from_arrays(codes, pa.array(levels))

    # Two files' rows in one block: "prediction" encoded with other dictionaries in each.
    block = pa.Table.from_batches(
        [
            pa.record_batch(
                {"request_id": ["a", "b"], "prediction": dictionary(["0", "1"], ["0", "1"])}
            ),
            pa.record_batch(
                {"request_id": ["c", "d"], "prediction": dictionary(["0", "1"], ["1", "0"])}
            ),
        ]
    )
    labels = pa.table({"request_id": ["a", "d"], "__label__": ["0", "0"]})
    plan = _Plan({}, [], None, True, None, None, 1, 0, labels=labels)
    joined = _join_labels(block, None, plan).sort_by("__label__")
    assert sorted(joined.column("prediction").to_pylist()) == ["0", "1"]
    assert joined.num_rows == 2

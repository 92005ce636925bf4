"""Tests of raymlops.model.predictor (save/load/verify) and raymlops.train.loop.fit (no Ray)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymlops.core.config import PipelineConfig, load_config
from raymlops.core.errors import ArtifactIntegrityError
from raymlops.data.dataset import ColumnRoles, DatasetSplits, load_dataset, synth_dataset
from raymlops.model.architectures import build_model
from raymlops.model.features import Preprocessor
from raymlops.model.predictor import Prediction, Predictor
from raymlops.train.loop import (
    CHECKPOINT_STATE,
    TrainingArrays,
    architecture_spec,
    decision_epochs,
    evaluate,
    fit,
    load_best_predictor,
)

CHECKPOINT_FILES = [
    "best.safetensors",
    "last.safetensors",
    "optimizer.safetensors",
    "rng.safetensors",
    CHECKPOINT_STATE,
]


@dataclass
class Prepared:
    config: PipelineConfig
    splits: DatasetSplits
    roles: ColumnRoles
    prep: Preprocessor
    arrays: TrainingArrays


def _prepare(path: str, **overrides: Any) -> Prepared:
    values: dict[str, Any] = {
        "data.path": path,
        "data.label": "label",
        "data.task": "auto",
        "data.id_columns": ["id"],
        "tune.search_space": {},
        "model.params.depth": 1,
        "model.params.width": 16,
        "model.params.dropout": 0.0,
        "train.epochs": 4,
        "train.batch_size": 32,
        "train.learning_rate": 0.01,
        "train.early_stopping_patience": None,
        "train.checkpoint_every": 1,
    }
    values.update(overrides)
    config = load_config(None).apply_trial(values)
    _, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    return Prepared(config, splits, roles, prep, arrays)


@pytest.fixture(scope="module")
def classification_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("synth")
    return synth_dataset(str(folder / "cls.parquet"), rows=400, features=4, categorical=1, seed=3)


@pytest.fixture(scope="module")
def regression_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("synth")
    return synth_dataset(
        str(folder / "reg.parquet"), rows=300, features=3, task="regression", seed=4
    )


@pytest.fixture(scope="module")
def classification(classification_path: str) -> Prepared:
    return _prepare(classification_path)


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and they make timing erratic on a
    busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _predictor(prepared: Prepared) -> Predictor:
    spec = architecture_spec(prepared.config, prepared.prep)
    torch.manual_seed(0)
    model = build_model(spec["name"], spec["params"], spec["in_features"], spec["out_features"])
    return Predictor(model, prepared.prep, spec, metadata={"name": "synth"})


# --------------------------------------------------------------------------- predictor


def test_architecture_spec(classification: Prepared) -> None:
    spec = architecture_spec(classification.config, classification.prep)
    assert spec == {
        "name": "mlp",
        "params": classification.config.model.params,
        "in_features": classification.prep.n_outputs,
        "out_features": 2,
    }
    assert classification.arrays.x_train.shape == (
        classification.splits.train.num_rows,
        classification.prep.n_outputs,
    )
    json.dumps(spec)


def test_predict_classification(classification: Prepared) -> None:
    predictor = _predictor(classification)
    test = classification.splits.test
    result = predictor.predict(test)
    assert isinstance(result, Prediction)
    assert result.classes == ["0", "1"]
    assert result.probabilities is not None
    assert result.probabilities.shape == (test.num_rows, 2)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert set(result.predictions.tolist()) <= {"0", "1"}
    expected = np.array(["0", "1"])[result.probabilities.argmax(axis=1)]
    np.testing.assert_array_equal(result.predictions, expected)
    assert predictor.feature_names == ["f0", "f1", "f2", "f3", "c0"]
    assert predictor.task == "classification"
    assert "unsaved" in repr(predictor)

    frame = result.to_frame()
    assert list(frame.columns) == ["prediction", "proba_0", "proba_1"]
    assert len(frame) == test.num_rows
    np.testing.assert_array_equal(frame["proba_1"].to_numpy(), result.probabilities[:, 1])

    # Records and Arrow give the same answer (one code path).
    records = test.select(predictor.feature_names).to_pylist()
    np.testing.assert_array_equal(predictor.predict(records).probabilities, result.probabilities)


def test_save_load_round_trip_without_pickle(classification: Prepared, tmp_path: Path) -> None:
    predictor = _predictor(classification)
    folder = tmp_path / "model"
    digests = predictor.save(folder, extra_files={"model_card.json": {"owner": "tests"}})
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "architecture.json",
        "manifest.json",
        "model_card.json",
        "preprocessing.json",
        "weights.safetensors",
    ]
    assert set(digests) == set(names) - {"manifest.json"}
    assert json.loads((folder / "manifest.json").read_text()) == digests
    assert all(len(d) == 64 for d in digests.values())

    for path in folder.iterdir():
        raw = path.read_bytes()
        assert not raw.startswith(b"PK"), f"{path.name} is a zip (torch.save) archive"
        if path.suffix == ".json":
            json.loads(raw)  # plain JSON, so not a pickle
            assert not raw.startswith(b"\x80")
        else:
            # safetensors: an 8-byte little-endian header size, then a JSON header.
            size = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8 : 8 + size])
            assert set(header) - {"__metadata__"} == set(predictor.model.state_dict())
            assert raw[8:9] == b"{"

    loaded = Predictor.load(folder, metadata={"name": "synth", "version": 3})
    test = classification.splits.test
    np.testing.assert_array_equal(
        loaded.predict(test).probabilities, predictor.predict(test).probabilities
    )
    assert loaded.architecture == predictor.architecture
    assert loaded.preprocessor == predictor.preprocessor
    assert repr(loaded) == "Predictor(synth v3, task=classification, features=5)"


def test_loading_with_registry_digests(classification: Prepared, tmp_path: Path) -> None:
    digests = _predictor(classification).save(tmp_path)
    (tmp_path / "manifest.json").unlink()
    loaded = Predictor.load(tmp_path, expected_digests=digests)
    assert loaded.preprocessor == classification.prep
    with pytest.raises(ArtifactIntegrityError, match=r"has no manifest\.json"):
        Predictor.load(tmp_path)


def test_tampered_weights_are_refused(classification: Prepared, tmp_path: Path) -> None:
    _predictor(classification).save(tmp_path)
    weights = tmp_path / "weights.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactIntegrityError, match=r"weights\.safetensors has sha256"):
        Predictor.load(tmp_path)


def test_tampered_preprocessing_is_refused(classification: Prepared, tmp_path: Path) -> None:
    _predictor(classification).save(tmp_path)
    path = tmp_path / "preprocessing.json"
    data = json.loads(path.read_text())
    data["mean"]["f0"] += 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactIntegrityError, match=r"preprocessing\.json"):
        Predictor.load(tmp_path)


def test_expected_digest_mismatch(classification: Prepared, tmp_path: Path) -> None:
    digests = _predictor(classification).save(tmp_path)
    wrong = dict(digests, **{"architecture.json": "0" * 64})
    with pytest.raises(ArtifactIntegrityError, match=r"architecture\.json.*refusing to load"):
        Predictor.load(tmp_path, expected_digests=wrong)
    missing = {k: v for k, v in digests.items() if k != "weights.safetensors"}
    with pytest.raises(ArtifactIntegrityError, match="no digest recorded for weights"):
        Predictor.load(tmp_path, expected_digests=missing)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(ArtifactIntegrityError, match=r"weights\.safetensors is missing"):
        Predictor.load(tmp_path, expected_digests=digests)


def test_regression_predictions_are_in_original_units(regression_path: str) -> None:
    prepared = _prepare(regression_path, **{"model.params.depth": 0})
    prep = prepared.prep
    assert prep.classes is None
    predictor = _predictor(prepared)
    linear = predictor.model.net[0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(0.5)
    result = predictor.predict(prepared.splits.test)
    assert result.probabilities is None
    assert result.classes is None
    assert result.predictions.dtype == np.float64
    expected = 0.5 * prep.target_std + prep.target_mean
    np.testing.assert_allclose(result.predictions, expected, rtol=1e-6)
    assert list(result.to_frame().columns) == ["prediction"]


def test_trained_regression_predictor_is_accurate(regression_path: str) -> None:
    prepared = _prepare(
        regression_path,
        **{"train.epochs": 12, "train.learning_rate": 0.05, "model.params.depth": 0},
    )
    reports: list[dict[str, float]] = []
    best = fit(prepared.config, prepared.arrays, lambda metrics, folder: reports.append(metrics))
    assert len(reports) == 12
    assert "val_rmse" in best and "val_r2" in best
    assert "val_accuracy" not in best
    label = prepared.splits.validation.column("label").to_numpy()
    # The synthetic relation is linear plus a small sine and noise: R² well above 0.
    assert best["val_r2"] > 0.5
    assert best["val_rmse"] < label.std()


# --------------------------------------------------------------------------- training loop


class Recorder:
    """A plain-Python reporter: keeps metrics and copies of every checkpoint folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metrics: list[dict[str, float]] = []
        self.checkpoints: dict[int, Path] = {}

    def __call__(self, metrics: dict[str, float], folder: Path | None) -> None:
        self.metrics.append(dict(metrics))
        if folder is not None:
            epoch = int(metrics["epoch"])
            assert sorted(p.name for p in folder.iterdir()) == CHECKPOINT_FILES
            self.checkpoints[epoch] = Path(shutil.copytree(folder, self.root / f"e{epoch}"))

    @property
    def epochs(self) -> list[int]:
        return [int(m["epoch"]) for m in self.metrics]


def test_fit_reports_every_epoch(classification: Prepared, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path)
    best = fit(classification.config, classification.arrays, recorder)
    assert recorder.epochs == [1, 2, 3, 4]
    for m in recorder.metrics:
        for key in ("train_loss", "val_loss", "val_accuracy", "val_log_loss", "val_roc_auc"):
            assert math.isfinite(m[key])
        assert m["val_loss"] == m["val_log_loss"]
        assert m["early_stopped"] == 0.0
    losses = [m["val_loss"] for m in recorder.metrics]
    assert best["val_loss"] == min(losses)
    assert best["epoch"] == 1 + losses.index(min(losses))
    assert recorder.metrics[-1]["best_val_loss"] == min(losses)
    # The learning rate is large enough to learn something in 4 epochs.
    assert losses[-1] < losses[0]
    assert best["val_accuracy"] > 0.6

    # Every epoch is checkpointed (checkpoint_every=1) with the documented files.
    assert sorted(recorder.checkpoints) == [1, 2, 3, 4]
    state = json.loads((recorder.checkpoints[3] / CHECKPOINT_STATE).read_text())
    assert state["epoch"] == 3
    assert state["best"] == min(losses[:3])
    assert set(state) == {"epoch", "best", "best_metrics", "stale", "optimizer"}


def test_fit_is_deterministic(classification: Prepared, tmp_path: Path) -> None:
    first, second = Recorder(tmp_path / "a"), Recorder(tmp_path / "b")
    fit(classification.config, classification.arrays, first)
    fit(classification.config, classification.arrays, second)
    assert [m["val_loss"] for m in first.metrics] == [m["val_loss"] for m in second.metrics]


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_with_a_frozen_model(
    classification_path: str, tmp_path: Path, patience: int
) -> None:
    # A learning rate of 1e-12 cannot move float32 weights: val_loss never improves
    # after the first epoch, so training stops after `patience` stale epochs.
    prepared = _prepare(
        classification_path,
        **{
            "train.learning_rate": 1e-12,
            "train.early_stopping_patience": patience,
            "train.epochs": 10,
        },
    )
    recorder = Recorder(tmp_path)
    best = fit(prepared.config, prepared.arrays, recorder)
    assert recorder.epochs == list(range(1, patience + 2))
    flags = [m["early_stopped"] for m in recorder.metrics]
    assert flags == [0.0] * patience + [1.0]
    assert len({m["val_loss"] for m in recorder.metrics}) == 1
    assert best["epoch"] == 1.0
    # The stopping epoch is the last one, so it is checkpointed.
    assert max(recorder.checkpoints) == patience + 1


@pytest.mark.parametrize(
    ("scheduler", "every", "expected"),
    [
        ("fifo", 100, [4]),  # only the last epoch can end a FIFO trial
        ("asha", 100, [1, 3, 4]),  # ASHA may stop a trial at its rungs 1 and 3
        ("fifo", 2, [2, 4]),  # plus every `checkpoint_every` epochs, for crash recovery
        ("fifo", 1, [1, 2, 3, 4]),
    ],
)
def test_checkpoint_cadence(
    classification_path: str, tmp_path: Path, scheduler: str, every: int, expected: list[int]
) -> None:
    prepared = _prepare(
        classification_path,
        **{
            "train.checkpoint_every": every,
            "train.epochs": 4,
            "tune.scheduler": scheduler,
        },
    )
    recorder = Recorder(tmp_path)
    fit(prepared.config, prepared.arrays, recorder)
    assert recorder.epochs == [1, 2, 3, 4]
    assert sorted(recorder.checkpoints) == expected


@pytest.mark.parametrize(
    ("epochs", "grace", "factor", "expected"),
    [
        (30, 1, 3.0, {1, 3, 9, 27, 30}),
        (10, 1, 3.0, {1, 3, 9, 10}),
        (20, 2, 2.0, {2, 4, 8, 16, 20}),
        (10, 1, 2.5, {1, 3, 7, 10}),  # Ray's rungs 2.5 and 6.25 are decided at 3 and 7
        (5, 10, 3.0, {5}),
    ],
)
def test_decision_epochs_follow_rays_asha_rungs(
    epochs: int, grace: int, factor: float, expected: set[int]
) -> None:
    from ray.tune.schedulers.async_hyperband import _Bracket

    config = load_config(
        None,
        [
            f"train.epochs={epochs}",
            f"tune.grace_period={grace}",
            f"tune.reduction_factor={factor}",
        ],
    )
    assert decision_epochs(config) == expected
    if grace <= epochs:
        bracket = _Bracket(min_t=grace, max_t=epochs, reduction_factor=factor, s=0)
        rays = {math.ceil(milestone) for milestone, _ in bracket._rungs}
        assert rays | {epochs} == expected
    fifo = config.apply_trial({"tune.scheduler": "fifo"})
    assert decision_epochs(fifo) == {epochs}


def test_resume_continues_from_saved_epoch(classification: Prepared, tmp_path: Path) -> None:
    full = Recorder(tmp_path / "full")
    fit(classification.config, classification.arrays, full)
    resumed = Recorder(tmp_path / "resumed")
    best = fit(
        classification.config,
        classification.arrays,
        resumed,
        checkpoint_dir=full.checkpoints[2],
    )
    assert resumed.epochs == [3, 4]
    # Without dropout the resumed run reproduces the uninterrupted one exactly.
    assert [m["val_loss"] for m in resumed.metrics] == [m["val_loss"] for m in full.metrics[2:]]
    assert best["val_loss"] == min(m["val_loss"] for m in full.metrics)


def test_resume_from_final_checkpoint_trains_no_more(
    classification: Prepared, tmp_path: Path
) -> None:
    full = Recorder(tmp_path / "full")
    best_full = fit(classification.config, classification.arrays, full)
    again = Recorder(tmp_path / "again")
    best = fit(
        classification.config, classification.arrays, again, checkpoint_dir=full.checkpoints[4]
    )
    assert again.metrics == []
    assert best == best_full


def test_resume_with_dropout_reproduces_uninterrupted_run(
    classification_path: str, tmp_path: Path
) -> None:
    prepared = _prepare(classification_path, **{"model.params.dropout": 0.3})
    full = Recorder(tmp_path / "full")
    fit(prepared.config, prepared.arrays, full)
    resumed = Recorder(tmp_path / "resumed")
    fit(prepared.config, prepared.arrays, resumed, checkpoint_dir=full.checkpoints[2])
    assert [m["val_loss"] for m in resumed.metrics] == [m["val_loss"] for m in full.metrics[2:]]


def test_best_checkpoint_predictor_matches_best_metrics(
    classification: Prepared, tmp_path: Path
) -> None:
    recorder = Recorder(tmp_path)
    best = fit(classification.config, classification.arrays, recorder)
    predictor = load_best_predictor(
        recorder.checkpoints[4], classification.config, classification.arrays.preprocessor
    )
    metrics = evaluate(predictor, classification.arrays.x_val, classification.arrays.y_val)
    assert metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(best["val_accuracy"])
    # And it survives a save/load round trip.
    predictor.save(tmp_path / "best-model")
    reloaded = Predictor.load(tmp_path / "best-model")
    np.testing.assert_array_equal(
        reloaded.predict_matrix(classification.arrays.x_val),
        predictor.predict_matrix(classification.arrays.x_val),
    )


def test_unreported_tune_metric_is_an_error(classification_path: str) -> None:
    prepared = _prepare(classification_path, **{"tune.metric": "val_rmse"})
    with pytest.raises(ValueError, match=r"tune\.metric 'val_rmse' is not reported"):
        fit(prepared.config, prepared.arrays, lambda metrics, folder: None)


def test_fit_with_batch_norm_and_a_batch_of_one(classification_path: str) -> None:
    # 280 training rows with batch size 31 leave a final batch of one row, which BatchNorm
    # cannot normalise; the loop skips it instead of crashing.
    prepared = _prepare(
        classification_path,
        **{"model.params.batch_norm": True, "train.batch_size": 31, "train.epochs": 1},
    )
    assert prepared.arrays.x_train.shape[0] % 31 == 1
    seen: list[dict[str, float]] = []
    fit(prepared.config, prepared.arrays, lambda metrics, folder: seen.append(metrics))
    assert len(seen) == 1
    assert math.isfinite(seen[0]["train_loss"])


def test_training_arrays_match_preprocessor(classification: Prepared) -> None:
    arrays = classification.arrays
    prep = classification.prep
    np.testing.assert_array_equal(arrays.x_val, prep.transform(classification.splits.validation))
    labels = classification.splits.train.column("label").cast(pa.string()).to_pylist()
    assert arrays.y_train.tolist() == [prep.classes.index(v) for v in labels]  # type: ignore[union-attr]
    assert Preprocessor.from_dict(arrays.preprocessor) == prep


_USER_MODULE = """
from pathlib import Path

from raymlops.core.architecture_params import MLPParams
from raymlops.model.architectures import MLP, register_architecture

Path(__file__).with_suffix(".imported").write_text("imported")
register_architecture("{name}:Net", MLPParams)(type("Net", (MLP,), {{}}))
"""


def _retarget(folder: Path, **changes: Any) -> None:
    """Rewrite the saved architecture.json with `changes`, and the manifest to match (as
    someone who can write a version's files and digests could)."""
    from raymlops.model.artifacts import write_manifest

    path = folder / "architecture.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    write_manifest(folder)


def test_a_model_never_makes_raymlops_import_a_module_it_was_not_allowed(
    classification: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """architecture.json naming `package.module:Name` that no config registered: refused
    before the module is imported, unless RAYMLOPS_ALLOWED_MODULES lists it (#15)."""
    from raymlops.core import architecture_params
    from raymlops.core.errors import RegistryError
    from raymlops.model import architectures

    # The import registers the architecture: forgotten after this test, so that no later
    # test (a Serve replica, a batch actor) is asked to import a module only this one has.
    monkeypatch.setattr(architecture_params, "_SCHEMAS", dict(architecture_params._SCHEMAS))
    monkeypatch.setattr(architectures, "_MODULES", dict(architectures._MODULES))
    name = f"rmo_user_arch_{tmp_path.name[-6:].replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(_USER_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "model"
    _predictor(classification).save(folder)
    _retarget(folder, name=f"{name}:Net")
    monkeypatch.delenv("RAYMLOPS_ALLOWED_MODULES", raising=False)
    with pytest.raises(RegistryError, match=rf"synth v3: architecture.json names '{name}:Net'"):
        Predictor.load(folder, metadata={"name": "synth", "version": 3})
    assert not (tmp_path / f"{name}.imported").exists()  # never imported
    monkeypatch.setenv("RAYMLOPS_ALLOWED_MODULES", f"other, {name}")
    loaded = Predictor.load(folder)
    assert (tmp_path / f"{name}.imported").exists()
    assert len(loaded.predict(classification.splits.test.slice(0, 3)).predictions) == 3


def test_a_model_shape_beyond_bounds_is_refused(classification: Prepared, tmp_path: Path) -> None:
    from raymlops.core.errors import RegistryError

    _predictor(classification).save(tmp_path)
    _retarget(tmp_path, in_features=10**9)
    with pytest.raises(RegistryError, match=r"in_features=1000000000 is outside 1…1,000,000"):
        Predictor.load(tmp_path)
    _retarget(tmp_path, in_features=5, out_features=-1)
    with pytest.raises(RegistryError, match=r"out_features=-1"):
        Predictor.load(tmp_path)

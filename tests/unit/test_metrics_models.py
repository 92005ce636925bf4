"""Tests of raymlops.model.metrics and raymlops.model.architectures."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from raymlops.core.config import ModelConfig, PipelineConfig, load_config
from raymlops.core.errors import ConfigError
from raymlops.model import architectures as models
from raymlops.model.architectures import (
    MLP,
    build_model,
    list_architectures,
    register_architecture,
    validate_params,
)
from raymlops.model.metrics import (
    MetricAccumulator,
    classification_metrics,
    regression_metrics,
    roc_auc,
)

# --------------------------------------------------------------------------- metrics


def test_binary_classification_metrics_by_hand() -> None:
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    result = classification_metrics(y, probs)
    # Predictions 0, 1, 0, 1: rows 0 and 1 right.
    assert result["accuracy"] == pytest.approx(0.5)
    # Each class: tp=1, fp=1, fn=1 -> F1 = 0.5.
    assert result["f1_macro"] == pytest.approx(0.5)
    # Mean negative log probability of the true class.
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.3)) / 4
    assert result["log_loss"] == pytest.approx(expected)
    # Positive scores (0.8, 0.4) vs negative (0.1, 0.7): 3 of 4 pairs ordered correctly.
    assert result["roc_auc"] == pytest.approx(0.75)
    assert set(result) == {"accuracy", "f1_macro", "log_loss", "roc_auc"}


def test_multiclass_metrics_have_no_auc_and_clip_zero_probabilities() -> None:
    y = np.array([0, 1, 2])
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = classification_metrics(y, probs)
    assert "roc_auc" not in result
    assert result["accuracy"] == 1.0
    assert result["f1_macro"] == 1.0
    assert 0.0 <= result["log_loss"] < 1e-5

    wrong = classification_metrics(np.array([1]), np.array([[1.0, 0.0, 0.0]]), n_classes=3)
    assert math.isfinite(wrong["log_loss"])
    assert wrong["log_loss"] == pytest.approx(-math.log(1e-7), rel=1e-3)


def test_binary_auc_is_nan_with_one_class_present() -> None:
    result = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]))
    assert math.isnan(result["roc_auc"])
    assert result["accuracy"] == 1.0


def test_f1_macro_counts_absent_predicted_classes() -> None:
    y = np.array([0, 0, 1, 2])
    probs = np.tile([0.8, 0.1, 0.1], (4, 1))  # always predicts class 0
    result = classification_metrics(y, probs, n_classes=3)
    assert result["accuracy"] == pytest.approx(0.5)
    # Class 0: precision 0.5, recall 1 -> F1 2/3; classes 1 and 2: 0.
    assert result["f1_macro"] == pytest.approx((2 / 3) / 3)


def _in_pieces(acc_args: dict[str, Any], outputs: np.ndarray, targets: np.ndarray) -> dict:
    """Metrics of three accumulators over uneven pieces (one empty), merged as workers do."""
    cuts = [0, 0, len(targets) // 3, len(targets)]
    workers = [MetricAccumulator(**acc_args) for _ in range(3)]
    for acc, start, stop in zip(workers, cuts[:-1], cuts[1:], strict=True):
        for lo in range(start, stop, 97):  # batch by batch
            hi = min(lo + 97, stop)
            acc.update(outputs[lo:hi], targets[lo:hi])
    for other in workers[1:]:
        workers[0].merge(other.state)
    assert workers[0].rows == len(targets)
    return workers[0].result() | {"bound": workers[0].auc_error_bound()}


def test_accumulated_binary_metrics_equal_the_whole_splits() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=5000)
    logits = rng.normal(0, 1.5, size=5000) + 1.2 * y
    p1 = 1 / (1 + np.exp(-logits))
    probs = np.stack([1 - p1, p1], axis=1)
    exact = classification_metrics(y, probs)
    got = _in_pieces({"n_classes": 2}, probs, y)
    for key in ("accuracy", "f1_macro", "log_loss"):
        assert got[key] == pytest.approx(exact[key], rel=1e-12), key
    assert got["loss"] == got["log_loss"]
    # The binned AUC is within its stated bound of the exact one, and the bound is small.
    assert 0 < got["bound"] < 1e-3
    assert abs(got["roc_auc"] - exact["roc_auc"]) <= got["bound"]


def test_accumulated_auc_counts_same_bin_pairs_as_ties() -> None:
    acc = MetricAccumulator(2, auc_bins=4)
    # Scores 0.6 and 0.7 share a bin (logits 0.41 and 0.85 of a 4-bin histogram over ±16).
    acc.update(np.array([[0.3, 0.7], [0.4, 0.6], [0.99, 0.01]]), np.array([1, 0, 0]))
    exact = roc_auc(np.array([1, 0, 0]), np.array([0.7, 0.6, 0.01]))
    assert exact == 1.0
    assert acc.result()["roc_auc"] == pytest.approx(0.75)  # the tied pair counts 1/2
    assert acc.auc_error_bound() == pytest.approx(0.25)


def test_accumulated_multiclass_metrics_and_empty_state() -> None:
    rng = np.random.default_rng(4)
    probs = rng.dirichlet([1, 1, 1], size=700)
    y = rng.integers(0, 3, size=700)
    exact = classification_metrics(y, probs, 3)
    got = _in_pieces({"n_classes": 3}, probs, y)
    assert "roc_auc" not in got and got["bound"] == 0.0
    for key in ("accuracy", "f1_macro", "log_loss"):
        assert got[key] == pytest.approx(exact[key], rel=1e-12), key
    empty = MetricAccumulator(3).result()
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["loss"])
    with pytest.raises(ValueError, match="state of shape"):
        MetricAccumulator(3).merge(MetricAccumulator(2).state)


def test_accumulated_regression_metrics_equal_the_whole_splits() -> None:
    rng = np.random.default_rng(5)
    mean, std = 1e6, 40.0  # a large offset: the sums are kept around the target's mean
    truth = rng.normal(mean, std, size=3000)
    pred = truth + rng.normal(0, 5, size=3000)
    z = (truth - mean) / std
    exact = regression_metrics(truth, pred)
    got = _in_pieces({"n_classes": None, "center": mean, "scale": std}, pred, z)
    for key in ("rmse", "mae", "r2"):
        assert got[key] == pytest.approx(exact[key], rel=1e-9), key
    assert got["loss"] == pytest.approx(np.mean(((pred - mean) / std - z) ** 2), rel=1e-9)
    constant = MetricAccumulator(None, center=2.0, scale=1.0)
    constant.update(np.array([3.0, 3.0]), np.array([1.0, 1.0]))  # truth 3, 3; exact fit
    assert constant.result()["r2"] == 1.0
    single = MetricAccumulator(None)
    single.update(np.array([1.0]), np.array([0.0]))
    assert math.isnan(single.result()["r2"])


def test_regression_metrics_match_numpy() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(10, 3, size=50)
    pred = y + rng.normal(0, 1, size=50)
    result = regression_metrics(y, pred)
    err = pred - y
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert result["mae"] == pytest.approx(np.mean(np.abs(err)))
    r2 = 1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2)
    assert result["r2"] == pytest.approx(r2)
    perfect = regression_metrics(y, y)
    assert perfect == {"rmse": 0.0, "mae": 0.0, "r2": 1.0}


def test_regression_r2_is_nan_for_one_row() -> None:
    result = regression_metrics(np.array([2.0]), np.array([3.0]))
    assert result["rmse"] == pytest.approx(1.0)
    assert math.isnan(result["r2"])


# --------------------------------------------------------------------------- models


def test_list_architectures_contains_mlp() -> None:
    assert "mlp" in list_architectures()
    assert list_architectures() == sorted(list_architectures())


def test_validate_params_fills_defaults() -> None:
    assert validate_params("mlp", {}) == {
        "depth": 2,
        "width": 64,
        "dropout": 0.1,
        "activation": "relu",
        "batch_norm": False,
    }
    assert validate_params("mlp", {"width": 8})["width"] == 8


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"colour": 1}, r"params\.colour: unknown key"),
        ({"depth": -1}, r"params\.depth: .*greater than or equal to 0"),
        ({"depth": 17}, r"params\.depth: .*less than or equal to 16"),
        ({"dropout": 1.0}, r"params\.dropout"),
        ({"width": 0}, r"params\.width"),
        ({"activation": "swish"}, r"params\.activation"),
    ],
)
def test_validate_params_rejects(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_params("mlp", params)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        validate_params("resnet", {})
    with pytest.raises(ValueError, match="cannot import architecture module 'no_such_pkg_xyz'"):
        validate_params("no_such_pkg_xyz:Net", {})


def test_model_config_rejects_bad_params() -> None:
    with pytest.raises(ValidationError, match="depth"):
        ModelConfig(params={"depth": -1})


@pytest.mark.parametrize("batch_norm", [False, True])
def test_build_model_output_shape(batch_norm: bool) -> None:
    model = build_model("mlp", {"depth": 3, "width": 5, "batch_norm": batch_norm}, 7, 4)
    assert isinstance(model, MLP)
    out = model(torch.randn(6, 7))
    assert out.shape == (6, 4)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 5), (5, 5), (5, 5), (5, 4)]
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == batch_norm


def test_mlp_without_dropout_has_no_dropout_layer() -> None:
    model = build_model("mlp", {"dropout": 0.0, "activation": "tanh"}, 3, 2)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert any(isinstance(m, nn.Tanh) for m in model.modules())


def test_mlp_depth_zero_is_linear() -> None:
    model = build_model("mlp", {"depth": 0}, 4, 2)
    layers = list(model.modules())
    assert sum(isinstance(m, nn.Linear) for m in layers) == 1
    model.eval()
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    zero = model(torch.zeros(1, 4))
    with torch.no_grad():
        # An affine map: f(2a - 3b) = 2 f(a) - 3 f(b) + 2 f(0) (i.e. minus (2 - 3) times bias).
        left = model(2 * a - 3 * b)
        right = 2 * model(a) - 3 * model(b) + 2 * zero
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)


class _ScaledLinearParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0)


class _ScaledLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, scale: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test disappear after it."""
    from raymlops.core import architecture_params

    monkeypatch.setattr(models, "_MODULES", dict(models._MODULES))
    monkeypatch.setattr(architecture_params, "_SCHEMAS", dict(architecture_params._SCHEMAS))


@pytest.mark.usefixtures("isolated_registry")
def test_register_custom_architecture() -> None:
    decorated = register_architecture("scaled-linear", _ScaledLinearParams)(_ScaledLinear)
    assert decorated is _ScaledLinear
    assert "scaled-linear" in list_architectures()
    assert validate_params("scaled-linear", {}) == {"scale": 1.0}
    with pytest.raises(ValueError, match=r"params\.scale"):
        validate_params("scaled-linear", {"scale": 0})
    with pytest.raises(ValueError, match=r"params\.depth: unknown key"):
        validate_params("scaled-linear", {"depth": 2})

    config = ModelConfig(architecture="scaled-linear", params={"scale": 2.5})
    assert config.params == {"scale": 2.5}
    model = build_model(config.architecture, config.params, 3, 1)
    assert isinstance(model, _ScaledLinear)
    assert model.scale == 2.5
    assert model(torch.ones(2, 3)).shape == (2, 1)


@pytest.mark.usefixtures("isolated_registry")
def test_custom_architecture_usable_from_pipeline_config() -> None:
    register_architecture("scaled-linear", _ScaledLinearParams)(_ScaledLinear)
    config = load_config(
        None,
        [
            "model.architecture=scaled-linear",
            "model.params={scale: 3}",
            "tune.search_space={model.params.scale: {type: uniform, low: 0.5, high: 2}}",
        ],
    )
    assert isinstance(config, PipelineConfig)
    assert config.model.params == {"scale": 3.0}
    trial = config.apply_trial({"model.params.scale": 1.5})
    assert trial.model.params == {"scale": 1.5}
    with pytest.raises(ConfigError, match=r"model\.params\.scale': value -1\.0 is invalid"):
        load_config(
            None,
            [
                "model.architecture=scaled-linear",
                "model.params={scale: 3}",
                "tune.search_space={model.params.scale: {type: uniform, low: -1, high: 2}}",
            ],
        )


# --------------------------------------------------------------------------- vs scikit-learn


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_agree_with_scikit_learn(n_classes: int, seed: int) -> None:
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=200)
    logits = rng.normal(size=(200, n_classes)) + 1.5 * np.eye(n_classes)[y]
    # Round to create ties in the scores, which ROC AUC must average.
    probs = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2)
    probs = np.clip(probs, 1e-7, 1)
    probs /= probs.sum(axis=1, keepdims=True)
    ours = classification_metrics(y, probs, n_classes)
    labels = np.arange(n_classes)
    pred = probs.argmax(axis=1)
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert ours["f1_macro"] == pytest.approx(
        skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0)
    )
    assert ours["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=labels), rel=1e-9)
    if n_classes == 2:
        assert ours["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
    else:
        assert "roc_auc" not in ours


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_metrics_agree_with_scikit_learn(seed: int) -> None:
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    truth = rng.normal(size=100)
    pred = truth + rng.normal(scale=0.5, size=100)
    ours = regression_metrics(truth, pred)
    assert ours["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(truth, pred)))
    assert ours["mae"] == pytest.approx(skm.mean_absolute_error(truth, pred))
    assert ours["r2"] == pytest.approx(skm.r2_score(truth, pred))
    constant = np.ones(10)
    assert regression_metrics(constant, constant)["r2"] == skm.r2_score(constant, constant)

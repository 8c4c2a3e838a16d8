"""The functional metrics and the factories' `average()` against scikit-learn and SciPy."""

from __future__ import annotations

import warnings
from math import isnan

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as sk
from sklearn.preprocessing import label_binarize

from danling.metrics import (
    accuracy,
    auprc,
    auroc,
    binary_metrics,
    f1_score,
    functional,
    mcc,
    multiclass_metrics,
    multilabel_metrics,
    pearson,
    r2_score,
    regression_metrics,
    rmse,
    spearman,
)

SIZES = (1, 2, 33, 600)
KINDS = ("probabilities", "logits", "tied", "one_class")
DTYPES = (torch.float32, torch.float64)
AVERAGES = ("macro", "weighted", "micro")
CLASSES = 5


def tolerance(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float64 else 1e-4


def assert_close(actual, expected, dtype: torch.dtype, name: str = "") -> None:
    actual = float(actual)
    if isnan(expected):
        assert isnan(actual), f"{name}: expected nan, got {actual}"
    else:
        assert actual == pytest.approx(expected, abs=tolerance(dtype)), name


def assert_each_close(actual: torch.Tensor, expected, dtype: torch.dtype, name: str = "") -> None:
    """One value per class, each equal to the oracle's for the same class (`nan` where the oracle has `nan`)."""
    expected = np.asarray(expected, dtype=float)
    assert tuple(actual.shape) == expected.shape, f"{name}: shape {tuple(actual.shape)}, expected {expected.shape}"
    for index, (value, reference) in enumerate(zip(actual.tolist(), expected.tolist())):
        assert_close(value, reference, dtype, f"{name}[{index}]")


# Data: scores carry some signal so the metrics are not all near chance.


def binary_data(n: int, kind: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + n)
    target = torch.randint(0, 2, (n,), generator=generator)
    if kind == "one_class":
        target = torch.full((n,), seed % 2)
    noise = torch.rand(n, generator=generator, dtype=dtype)
    scores = 0.35 * target.to(dtype) + 0.65 * noise
    if kind == "logits":
        scores = torch.randn(n, generator=generator, dtype=dtype) + 1.5 * target.to(dtype) - 0.75
    elif kind == "tied":
        scores = torch.round(scores * 10) / 10
    return scores, target


def multiclass_data(n: int, kind: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + n)
    target = torch.randint(0, CLASSES, (n,), generator=generator)
    if kind == "one_class":
        target = torch.full((n,), 2)
    one_hot = torch.nn.functional.one_hot(target, CLASSES).to(dtype)
    scores = 0.3 * one_hot + 0.7 * torch.rand(n, CLASSES, generator=generator, dtype=dtype)
    if kind == "logits":
        scores = torch.randn(n, CLASSES, generator=generator, dtype=dtype) + 1.5 * one_hot
    elif kind == "tied":
        scores = torch.round(scores * 10) / 10
    return scores, target


def multilabel_data(n: int, kind: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + n)
    target = torch.randint(0, 2, (n, CLASSES), generator=generator)
    if kind == "one_class":
        target = torch.ones(n, CLASSES, dtype=torch.long)
    scores = 0.35 * target.to(dtype) + 0.65 * torch.rand(n, CLASSES, generator=generator, dtype=dtype)
    if kind == "logits":
        scores = torch.randn(n, CLASSES, generator=generator, dtype=dtype) + 1.5 * target.to(dtype) - 0.75
    elif kind == "tied":
        scores = torch.round(scores * 10) / 10
    return scores, target


def regression_data(n: int, outputs: int, kind: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(n * 7 + outputs)
    target = torch.randn(n, outputs, generator=generator, dtype=dtype)
    input = target + 0.5 * torch.randn(n, outputs, generator=generator, dtype=dtype)
    if kind == "tied":
        input, target = torch.round(input), torch.round(target)
    elif kind == "constant":
        target[:, 0] = 1.5
        input[:, -1] = -2.0
    return input, target


# Oracles: scikit-learn on probabilities, leaving undefined classes out of averages.


def probabilities(scores: torch.Tensor, softmax: bool = False) -> np.ndarray:
    if scores.numel() == 0 or (scores.min() >= 0 and scores.max() <= 1):
        return scores.double().numpy()
    return (torch.softmax(scores, dim=1) if softmax else torch.sigmoid(scores)).double().numpy()


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def sk_auroc(y: np.ndarray, s: np.ndarray) -> float:
    return quiet(sk.roc_auc_score, y, s) if len(np.unique(y)) == 2 else float("nan")


def sk_auprc(y: np.ndarray, s: np.ndarray) -> float:
    return quiet(sk.average_precision_score, y, s) if y.any() else float("nan")


def sk_mcc(y: np.ndarray, p: np.ndarray) -> float:
    # scikit-learn reports 0 where the MCC is 0/0 (constant targets or predictions); danling reports nan.
    if len(np.unique(y)) < 2 or len(np.unique(p)) < 2:
        return float("nan")
    return sk.matthews_corrcoef(y, p)


def sk_per_class_average(metric, y: np.ndarray, s: np.ndarray, average: str) -> float:
    """Average of a binary metric over the columns of indicator `y`, leaving undefined columns out."""
    values = np.array([metric(y[:, c], s[:, c]) for c in range(y.shape[1])])
    defined = ~np.isnan(values)
    weights = y.sum(axis=0) * defined if average == "weighted" else defined.astype(float)
    return float((np.where(defined, values, 0) * weights).sum() / weights.sum()) if weights.sum() else float("nan")


def sk_ranking(metric, y: np.ndarray, s: np.ndarray, average: str) -> float:
    if average == "micro":
        return metric(y.ravel(), s.ravel())
    return sk_per_class_average(metric, y, s, average)


# Binary


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_binary_metrics_match_sklearn(n: int, kind: str, dtype: torch.dtype) -> None:
    scores, target = binary_data(n, kind, dtype)
    y, s = target.numpy(), probabilities(scores)
    p = (s >= 0.5).astype(int)
    assert_close(auroc(scores, target), sk_auroc(y, s), dtype, "auroc")
    assert_close(auprc(scores, target), sk_auprc(y, s), dtype, "auprc")
    assert_close(accuracy(scores, target), sk.accuracy_score(y, p), dtype, "acc")
    assert_close(f1_score(scores, target), quiet(sk.f1_score, y, p, zero_division=np.nan), dtype, "f1")
    assert_close(mcc(scores, target), sk_mcc(y, p), dtype, "mcc")


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_binary_threshold_moves_the_decision(threshold: float) -> None:
    scores, target = binary_data(200, "probabilities", torch.float64)
    y, p = target.numpy(), (scores.numpy() >= threshold).astype(int)
    assert_close(accuracy(scores, target, threshold=threshold), sk.accuracy_score(y, p), torch.float64)
    assert_close(f1_score(scores, target, threshold=threshold), sk.f1_score(y, p), torch.float64)
    assert_close(mcc(scores, target, threshold=threshold), sk.matthews_corrcoef(y, p), torch.float64)


def test_binary_accepts_column_input_and_boolean_target() -> None:
    scores, target = binary_data(50, "probabilities", torch.float32)
    expected = float(auroc(scores, target))
    assert float(auroc(scores.unsqueeze(1), target.bool())) == expected


# Multiclass


@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_multiclass_metrics_match_sklearn(n: int, kind: str, dtype: torch.dtype, average: str) -> None:
    scores, target = multiclass_data(n, kind, dtype)
    y, s = target.numpy(), probabilities(scores, softmax=True)
    onehot = label_binarize(y, classes=range(CLASSES))
    p = scores.argmax(dim=1).numpy()
    options = {"task": "multiclass", "num_classes": CLASSES}
    assert_close(auroc(scores, target, average=average, **options), sk_ranking(sk_auroc, onehot, s, average), dtype)
    assert_close(auprc(scores, target, average=average, **options), sk_ranking(sk_auprc, onehot, s, average), dtype)
    expected_f1 = quiet(sk.f1_score, y, p, average=average, zero_division=np.nan)
    assert_close(f1_score(scores, target, average=average, **options), expected_f1, dtype, "f1")
    assert_close(accuracy(scores, target, **options), sk.accuracy_score(y, p), dtype, "acc")
    assert_close(mcc(scores, target, **options), sk_mcc(y, p), dtype, "mcc")


def test_multiclass_micro_auroc_is_sklearn_flattened_one_vs_rest() -> None:
    scores, target = multiclass_data(300, "logits", torch.float64)
    onehot = label_binarize(target.numpy(), classes=range(CLASSES))
    expected = sk.roc_auc_score(onehot, probabilities(scores, softmax=True), average="micro")
    assert_close(auroc(scores, target, "multiclass", average="micro"), expected, torch.float64)


def test_multiclass_macro_auroc_equals_sklearn_ovr() -> None:
    scores, target = multiclass_data(300, "logits", torch.float64)
    expected = sk.roc_auc_score(target.numpy(), probabilities(scores, softmax=True), multi_class="ovr")
    assert_close(auroc(scores, target, "multiclass"), expected, torch.float64)


def test_multiclass_accepts_extra_dimensions() -> None:
    scores, target = multiclass_data(48, "logits", torch.float64)
    images = scores.reshape(4, 12, CLASSES).permute(0, 2, 1)  # (N, C, L)
    assert float(auroc(images, target.reshape(4, 12), "multiclass")) == float(auroc(scores, target, "multiclass"))


# Multilabel


@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_multilabel_metrics_match_sklearn(n: int, kind: str, dtype: torch.dtype, average: str) -> None:
    scores, target = multilabel_data(n, kind, dtype)
    y, s = target.numpy(), probabilities(scores)
    p = (s >= 0.5).astype(int)
    options = {"task": "multilabel", "num_labels": CLASSES}
    assert_close(auroc(scores, target, average=average, **options), sk_ranking(sk_auroc, y, s, average), dtype)
    assert_close(auprc(scores, target, average=average, **options), sk_ranking(sk_auprc, y, s, average), dtype)
    expected_f1 = quiet(sk.f1_score, y, p, average=average, zero_division=np.nan)
    assert_close(f1_score(scores, target, average=average, **options), expected_f1, dtype, "f1")
    assert_close(accuracy(scores, target, **options), sk.accuracy_score(y, p), dtype, "acc")
    assert_close(mcc(scores, target, **options), sk_mcc(y.ravel(), p.ravel()), dtype, "mcc")


# average=None: each class (or label, or output) against the oracle's value for that same class, so values in the
# wrong order fail as surely as wrong values.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_multiclass_average_none_matches_sklearn_class_by_class(n: int, kind: str, dtype: torch.dtype) -> None:
    scores, target = multiclass_data(n, kind, dtype)
    y, s = target.numpy(), probabilities(scores, softmax=True)
    onehot = label_binarize(y, classes=range(CLASSES))
    p = scores.argmax(dim=1).numpy()
    options = {"task": "multiclass", "num_classes": CLASSES, "average": None}
    expected_auroc = [sk_auroc(onehot[:, c], s[:, c]) for c in range(CLASSES)]
    assert_each_close(auroc(scores, target, **options), expected_auroc, dtype, "auroc")
    expected_auprc = [sk_auprc(onehot[:, c], s[:, c]) for c in range(CLASSES)]
    assert_each_close(auprc(scores, target, **options), expected_auprc, dtype, "auprc")
    expected_f1 = quiet(sk.f1_score, y, p, labels=range(CLASSES), average=None, zero_division=np.nan)
    assert_each_close(f1_score(scores, target, **options), expected_f1, dtype, "f1")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_multilabel_average_none_matches_sklearn_label_by_label(n: int, kind: str, dtype: torch.dtype) -> None:
    scores, target = multilabel_data(n, kind, dtype)
    y, s = target.numpy(), probabilities(scores)
    p = (s >= 0.5).astype(int)
    options = {"task": "multilabel", "num_labels": CLASSES, "average": None}
    expected_auroc = [sk_auroc(y[:, c], s[:, c]) for c in range(CLASSES)]
    assert_each_close(auroc(scores, target, **options), expected_auroc, dtype, "auroc")
    expected_auprc = [sk_auprc(y[:, c], s[:, c]) for c in range(CLASSES)]
    assert_each_close(auprc(scores, target, **options), expected_auprc, dtype, "auprc")
    expected_f1 = quiet(sk.f1_score, y, p, average=None, zero_division=np.nan)
    assert_each_close(f1_score(scores, target, **options), expected_f1, dtype, "f1")


# Ignored targets


def test_binary_ignore_index_skips_samples() -> None:
    scores, target = binary_data(200, "logits", torch.float64)
    target[::7] = -100
    keep = target != -100
    for metric in (auroc, auprc, accuracy, f1_score, mcc):
        expected = float(metric(scores[keep], target[keep]))
        assert float(metric(scores, target, ignore_index=-100)) == pytest.approx(expected), metric.__name__


def test_multiclass_ignore_index_skips_samples() -> None:
    scores, target = multiclass_data(200, "logits", torch.float64)
    target[::5] = -1
    keep = target != -1
    for metric in (auroc, auprc, accuracy, f1_score, mcc):
        expected = float(metric(scores[keep], target[keep], "multiclass"))
        assert float(metric(scores, target, "multiclass", ignore_index=-1)) == pytest.approx(expected)


@pytest.mark.parametrize("average", AVERAGES)
def test_multilabel_ignore_index_skips_entries(average: str) -> None:
    scores, target = multilabel_data(120, "probabilities", torch.float64)
    target[torch.rand(target.shape, generator=torch.Generator().manual_seed(3)) < 0.2] = -100
    y, s = target.numpy(), scores.numpy()
    valid = y != -100
    p = (s >= 0.5).astype(int)
    options = {"task": "multilabel", "ignore_index": -100}

    def per_label(metric, y, s):
        def masked(column_y, column_s, column):
            keep = valid[:, column]
            return metric(column_y[keep], column_s[keep])

        values = np.array([masked(y[:, c], s[:, c], c) for c in range(CLASSES)])
        support = np.array([(y[valid[:, c], c] == 1).sum() for c in range(CLASSES)])
        defined = ~np.isnan(values)
        weights = support * defined if average == "weighted" else defined.astype(float)
        return (np.where(defined, values, 0) * weights).sum() / weights.sum()

    if average == "micro":
        expected_auroc = sk_auroc(y[valid], s[valid])
        expected_f1 = sk.f1_score(y[valid], p[valid])
    else:
        expected_auroc = per_label(sk_auroc, y, s)
        expected_f1 = per_label(lambda a, b: quiet(sk.f1_score, a, b >= 0.5, zero_division=np.nan), y, s)
    assert_close(auroc(scores, target, average=average, **options), expected_auroc, torch.float64, "auroc")
    assert_close(f1_score(scores, target, average=average, **options), expected_f1, torch.float64, "f1")
    expected_accuracy = np.mean([(p[i][valid[i]] == y[i][valid[i]]).all() for i in range(len(y)) if valid[i].any()])
    assert_close(accuracy(scores, target, **options), expected_accuracy, torch.float64, "acc")
    assert_close(mcc(scores, target, **options), sk_mcc(y[valid], p[valid]), torch.float64, "mcc")


# Regression


def scipy_columns(function, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([function(x[:, d], y[:, d])[0] if len(x) > 1 else np.nan for d in range(x.shape[1])])


def nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if (~np.isnan(values)).any() else float("nan")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "tied", "constant"])
@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("n", SIZES)
def test_regression_metrics_match_scipy_and_sklearn(n: int, outputs: int, kind: str, dtype: torch.dtype) -> None:
    input, target = regression_data(n, outputs, kind, dtype)
    x, y = input.double().numpy(), target.double().numpy()
    assert_close(pearson(input, target), nanmean(scipy_columns(stats.pearsonr, x, y)), dtype, "pearson")
    assert_close(spearman(input, target), nanmean(scipy_columns(stats.spearmanr, x, y)), dtype, "spearman")
    constant = np.array([len(np.unique(y[:, d])) < 2 for d in range(outputs)])
    r2 = np.array([sk.r2_score(y[:, d], x[:, d]) if not constant[d] else np.nan for d in range(outputs)])
    assert_close(r2_score(input, target), nanmean(r2), dtype, "r2")
    assert_close(rmse(input, target), np.sqrt(sk.mean_squared_error(y, x)), dtype, "rmse")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "tied", "constant"])
@pytest.mark.parametrize("n", SIZES)
def test_regression_average_none_matches_scipy_and_sklearn_output_by_output(
    n: int, kind: str, dtype: torch.dtype
) -> None:
    outputs = 4
    input, target = regression_data(n, outputs, kind, dtype)
    x, y = input.double().numpy(), target.double().numpy()
    assert_each_close(pearson(input, target, average=None), scipy_columns(stats.pearsonr, x, y), dtype, "pearson")
    assert_each_close(spearman(input, target, average=None), scipy_columns(stats.spearmanr, x, y), dtype, "spearman")
    constant = [len(np.unique(y[:, d])) < 2 for d in range(outputs)]
    expected_r2 = [np.nan if constant[d] else sk.r2_score(y[:, d], x[:, d]) for d in range(outputs)]
    assert_each_close(r2_score(input, target, average=None), expected_r2, dtype, "r2")
    expected_rmse = np.sqrt(sk.mean_squared_error(y, x, multioutput="raw_values"))
    assert_each_close(rmse(input, target, average=None), expected_rmse, dtype, "rmse")


# Undefined and invalid input


def test_undefined_metrics_are_nan_without_warnings() -> None:
    scores, target = torch.tensor([0.2, 0.7, 0.4]), torch.tensor([1, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isnan(float(auroc(scores, target)))
        assert isnan(float(auprc(scores, 1 - target)))
        assert isnan(float(mcc(scores, target)))
        assert isnan(float(pearson(scores, torch.ones(3))))
        assert isnan(float(r2_score(scores, torch.ones(3))))
        assert isnan(float(accuracy(torch.empty(0), torch.empty(0, dtype=torch.long))))


def test_all_classes_undefined_averages_to_nan() -> None:
    scores = torch.rand(4, 3)
    assert isnan(float(auroc(scores, torch.ones(4, 3, dtype=torch.long), "multilabel")))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: auroc(torch.rand(4), torch.tensor([0, 1, 2, 1])), "only 0, 1"),
        (lambda: auroc(torch.rand(4), torch.tensor([0, 1, 1])), "as many elements"),
        (lambda: auroc(torch.rand(4, 3), torch.tensor([0, 1, 3, 1]), "multiclass"), "lie in"),
        (lambda: auroc(torch.rand(4, 3), torch.tensor([0, 1, 2, 1]), "multiclass", num_classes=4), "classes"),
        (lambda: auroc(torch.rand(4, 3), torch.tensor([0, 1, 2, 1]), "multiclass", average="mean"), "average"),
        (lambda: auroc(torch.rand(4), torch.tensor([0, 1, 0, 1]), "ordinal"), "task"),
        (lambda: rmse(torch.rand(4), torch.rand(4), average="macro"), "average"),
        (lambda: rmse(torch.rand(4, 2), torch.rand(4)), "shape"),
    ],
)
def test_invalid_arguments_raise_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_half_precision_scores_are_accepted() -> None:
    scores, target = binary_data(100, "probabilities", torch.float32)
    assert float(auroc(scores.half(), target)) == pytest.approx(sk_auroc(target.numpy(), scores.half().numpy()))


# Factories: average() over batches of different sizes equals the metric on everything.


def batches(total: int) -> list[slice]:
    sizes, start, step = [], 0, 0
    while start < total:
        size = (1, 7, 64, 3, 150)[step % 5]
        sizes.append(slice(start, min(start + size, total)))
        start += size
        step += 1
    return sizes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["probabilities", "logits", "tied"])
def test_binary_factory_average_matches_sklearn(kind: str, dtype: torch.dtype) -> None:
    scores, target = binary_data(500, kind, dtype)
    metrics = binary_metrics()
    for part in batches(len(target)):
        metrics.update(scores[part], target[part])
    y, s = target.numpy(), probabilities(scores)
    p = (s >= 0.5).astype(int)
    expected = {
        "auroc": sk.roc_auc_score(y, s),
        "auprc": sk.average_precision_score(y, s),
        "acc": sk.accuracy_score(y, p),
        "f1": sk.f1_score(y, p),
        "mcc": sk.matthews_corrcoef(y, p),
    }
    result = metrics.average()
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert_close(result[name], value, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["probabilities", "logits", "tied"])
def test_multiclass_factory_average_matches_sklearn(kind: str, dtype: torch.dtype) -> None:
    scores, target = multiclass_data(500, kind, dtype)
    metrics = multiclass_metrics(num_classes=CLASSES)
    for part in batches(len(target)):
        metrics.update(scores[part], target[part])
    y, s, p = target.numpy(), probabilities(scores, softmax=True), scores.argmax(dim=1).numpy()
    onehot = label_binarize(y, classes=range(CLASSES))
    expected = {
        "auroc": sk_per_class_average(sk_auroc, onehot, s, "macro"),
        "auprc": sk.average_precision_score(onehot, s, average="macro"),
        "acc": sk.accuracy_score(y, p),
        "f1": sk.f1_score(y, p, average="macro"),
        "mcc": sk.matthews_corrcoef(y, p),
    }
    result = metrics.average()
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert_close(result[name], value, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["probabilities", "logits", "tied"])
def test_multilabel_factory_average_matches_sklearn(kind: str, dtype: torch.dtype) -> None:
    scores, target = multilabel_data(500, kind, dtype)
    metrics = multilabel_metrics(num_labels=CLASSES)
    for part in batches(len(target)):
        metrics.update(scores[part], target[part])
    y, s = target.numpy(), probabilities(scores)
    p = (s >= 0.5).astype(int)
    expected = {
        "auroc": sk.roc_auc_score(y, s, average="macro"),
        "auprc": sk.average_precision_score(y, s, average="macro"),
        "acc": sk.accuracy_score(y, p),
        "f1": sk.f1_score(y, p, average="macro"),
        "mcc": sk.matthews_corrcoef(y.ravel(), p.ravel()),
    }
    result = metrics.average()
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert_close(result[name], value, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_factory_average_matches_scipy_and_sklearn(outputs: int, dtype: torch.dtype) -> None:
    input, target = regression_data(500, outputs, "tied", dtype)
    metrics = regression_metrics(num_outputs=outputs)
    for part in batches(len(target)):
        metrics.update(input[part], target[part])
    x, y = input.double().numpy(), target.double().numpy()
    expected = {
        "pearson": nanmean(scipy_columns(stats.pearsonr, x, y)),
        "spearman": nanmean(scipy_columns(stats.spearmanr, x, y)),
        "r2": sk.r2_score(y, x),
        "rmse": np.sqrt(sk.mean_squared_error(y, x)),
    }
    result = metrics.average()
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert_close(result[name], value, dtype, name)


@pytest.mark.parametrize("kind", ["probabilities", "tied"])
def test_ranking_in_many_runs_and_blocks_matches_sklearn(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    # Large inputs are sorted in runs and streamed in blocks; tiny runs and blocks exercise that on small data.
    monkeypatch.setattr(functional, "_RUN", 7)
    monkeypatch.setattr(functional, "_BLOCK", 5)
    scores, target = binary_data(300, kind, torch.float64)
    y, s = target.numpy(), scores.numpy()
    assert_close(auroc(scores, target), sk_auroc(y, s), torch.float64, "binary auroc")
    assert_close(auroc(scores, 1 - target), sk_auroc(1 - y, s), torch.float64, "binary auroc, positives sorted")
    assert_close(auprc(scores, target), sk_auprc(y, s), torch.float64, "binary auprc")
    scores, target = multiclass_data(300, kind, torch.float64)
    onehot = label_binarize(target.numpy(), classes=range(CLASSES))
    for average in AVERAGES:
        expected = sk_ranking(sk_auprc, onehot, scores.numpy(), average)
        assert_close(auprc(scores, target, "multiclass", average=average), expected, torch.float64, average)
    scores, target = multilabel_data(300, kind, torch.float64)
    expected = sk_ranking(sk_auroc, target.numpy(), scores.numpy(), "micro")
    assert_close(auroc(scores, target, "multilabel", average="micro"), expected, torch.float64, "multilabel")

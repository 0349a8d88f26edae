"""Evaluation metrics under the GLUE conventions, computed with scikit-learn and scipy.

Names: ``accuracy``, ``f1`` (binary, positive class 1, as GLUE reports for MRPC and QQP),
``matthews_correlation`` (CoLA), ``pearson`` and ``spearmanr`` (STS-B). Every result also
carries ``combined_score``, the mean of the requested metrics, which model selection uses so
that tasks with two metrics are ranked on one number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_CLASSIFICATION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy_score,
    "f1": f1_score,
    "matthews_correlation": matthews_corrcoef,
}
_REGRESSION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": lambda y, p: pearsonr(p, y).statistic,
    "spearmanr": lambda y, p: spearmanr(p, y).statistic,
}
_METRICS = {**_CLASSIFICATION, **_REGRESSION}
METRICS = tuple(_METRICS)


def compute_metrics(metric_names: Sequence[str], predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Score predictions: class ids or logits (2-D, argmax'd) for classification, floats for regression."""
    unknown = [name for name in metric_names if name not in METRICS]
    if unknown or not metric_names:
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    regression = any(name in _REGRESSION for name in metric_names)
    if regression and any(name in _CLASSIFICATION for name in metric_names):
        raise ValueError(f"cannot mix regression and classification metrics: {list(metric_names)}")
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if regression:
        predictions = predictions.reshape(len(labels))
    elif predictions.ndim == 2:
        predictions = predictions.argmax(axis=-1)
    scores = {name: float(_METRICS[name](labels, predictions)) for name in metric_names}
    scores["combined_score"] = float(np.mean(list(scores.values())))
    return scores


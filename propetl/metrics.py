"""Evaluation metrics under the GLUE conventions, computed with scikit-learn and scipy, and of generated text
with the libraries made for them (``rouge-score``, ``sacrebleu``).

Names: ``accuracy``, ``f1`` (binary, positive class 1, as GLUE reports for MRPC and QQP),
``matthews_correlation`` (CoLA), ``pearson`` and ``spearmanr`` (STS-B); for generated text
``rouge1``, ``rouge2``, ``rougeL`` (mean F-measure, Porter stemmer as the official T5 code),
``bleu`` and ``chrf`` (sacrebleu's corpus scores) and ``exact_match``. Every score is on [0, 1]
(sacrebleu's 0-100 divided by 100), so tables treat them as accuracies. Every result also
carries ``combined_score``, the mean of the requested metrics, which model selection uses so
that tasks with two metrics are ranked on one number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_CLASSIFICATION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy_score,
    "f1": f1_score,
    "matthews_correlation": matthews_corrcoef,
}
def _correlation(statistic: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    """A correlation, 0 where it is undefined (constant predictions, as an untrained model's often are), as the
    official T5 metrics score it (``propetl-t5/metrics/metrics.py:142-163``): NaN would leave no checkpoint to pick."""
    def score(labels: np.ndarray, predictions: np.ndarray) -> float:
        value = statistic(predictions, labels).statistic
        return float(value) if np.isfinite(value) else 0.0

    return score


_REGRESSION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": _correlation(pearsonr),
    "spearmanr": _correlation(spearmanr),
}
_METRICS = {**_CLASSIFICATION, **_REGRESSION}
METRICS = tuple(_METRICS)
ROUGE = ("rouge1", "rouge2", "rougeL")
GENERATION_METRICS = (*ROUGE, "bleu", "chrf", "exact_match")
_BY_TASK_TYPE = {"classification": tuple(_CLASSIFICATION), "regression": tuple(_REGRESSION), "generation": GENERATION_METRICS}


def check_metric_names(task_type: str, metric_names: Sequence[str]) -> None:
    """Refuse, in one line, metrics a task of this type cannot be scored on (before any data is loaded)."""
    allowed = _BY_TASK_TYPE[task_type]
    unknown = [name for name in metric_names if name not in allowed]
    if unknown or not metric_names:
        raise ValueError(f"metrics={list(metric_names)} not supported for a {task_type} task; allowed: {', '.join(allowed)}")


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


def score(metric_names: Sequence[str], predicted: Sequence, references: Sequence) -> dict[str, float]:
    """Score one value per example, as a task kind reads them off the model: class ids, scores, or generated texts."""
    if any(name in GENERATION_METRICS for name in metric_names):
        return generation_metrics(metric_names, predicted, references)
    return compute_metrics(metric_names, predicted, references)


def generation_metrics(metric_names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Score generated texts against one reference each, with rouge-score and sacrebleu as they are meant to be called."""
    check_metric_names("generation", metric_names)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scores = {name: float(values.mean()) for name, values in _per_example(metric_names, predictions, references).items()}
    if "bleu" in metric_names or "chrf" in metric_names:
        import sacrebleu

        corpus = {"bleu": sacrebleu.corpus_bleu, "chrf": sacrebleu.corpus_chrf}
        scores |= {name: corpus[name](list(predictions), [list(references)]).score / 100 for name in ("bleu", "chrf") if name in metric_names}
    scores = {name: scores[name] for name in metric_names}
    scores["combined_score"] = float(np.mean(list(scores.values())))
    return scores


def _per_example(metric_names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """The generation metrics that are means over examples (ROUGE F-measures, exact match), one value per example."""
    values: dict[str, np.ndarray] = {}
    rouge = [name for name in metric_names if name in ROUGE]
    if rouge:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(rouge, use_stemmer=True)
        each = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
        values |= {name: np.array([s[name].fmeasure for s in each]) for name in rouge}
    if "exact_match" in metric_names:
        values["exact_match"] = np.array([p.strip() == r.strip() for p, r in zip(predictions, references)], dtype=float)
    return values


def resampled_score(metric_names: Sequence[str], predicted: Sequence, references: Sequence) -> Callable[[np.ndarray], float]:
    """``combined_score`` of any resample of the examples (an index array, repeats allowed), for bootstraps.

    Generated texts' statistics are computed once per example, as sacrebleu's own paired bootstrap does
    (``sacrebleu.significance``): BLEU and chrF sum their sentence statistics over the resample and score the sum,
    which is their corpus score of the resampled sentences; ROUGE (a mean of per-example F-measures) and exact match
    average per example. Class ids and scores are rescored by :func:`compute_metrics` on the resample.
    """
    if not any(name in GENERATION_METRICS for name in metric_names):
        predicted, references = np.asarray(predicted), np.asarray(references)
        return lambda idx: compute_metrics(metric_names, predicted[idx], references[idx])["combined_score"]
    check_metric_names("generation", metric_names)
    predicted, references = [str(p) for p in predicted], [str(r) for r in references]
    per_example = _per_example(metric_names, predicted, references)
    corpus: dict[str, tuple[Any, np.ndarray]] = {}
    for name in ("bleu", "chrf"):
        if name in metric_names:
            import sacrebleu

            metric = sacrebleu.BLEU() if name == "bleu" else sacrebleu.CHRF()
            corpus[name] = (metric, np.array(metric._extract_corpus_statistics(predicted, [references])))

    def combined(idx: np.ndarray) -> float:
        scores = {name: float(values[idx].mean()) for name, values in per_example.items()}
        scores |= {name: metric._compute_score_from_stats(stats[idx].sum(0)).score / 100 for name, (metric, stats) in corpus.items()}
        return float(np.mean([scores[name] for name in metric_names]))

    return combined

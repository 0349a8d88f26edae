"""GLUE metrics against values worked out by hand; generation metrics against the libraries called directly."""

import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from propetl.data import TASKS
from propetl.metrics import check_metric_names, compute_metrics, generation_metrics

LABELS = [1, 1, 0, 0, 1, 0]
PREDICTIONS = [1, 0, 0, 1, 1, 0]  # TP=2 FN=1 FP=1 TN=2


def test_accuracy_and_binary_f1_of_the_positive_class():
    scores = compute_metrics(["accuracy", "f1"], PREDICTIONS, LABELS)

    # accuracy 4/6; precision 2/3, recall 2/3 -> f1 2/3; combined = mean of the two
    assert scores == pytest.approx({"accuracy": 4 / 6, "f1": 2 / 3, "combined_score": (4 / 6 + 2 / 3) / 2})


def test_logits_are_argmaxed():
    logits = [[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [0.0, 5.0], [-1.0, 1.0], [4.0, 4.5]]

    assert compute_metrics(["accuracy"], logits, LABELS)["accuracy"] == pytest.approx(3 / 6)


def test_matthews_correlation():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    scores = compute_metrics(["matthews_correlation"], PREDICTIONS, LABELS)

    assert scores["matthews_correlation"] == pytest.approx(1 / 3)
    assert scores["combined_score"] == pytest.approx(1 / 3)


def test_pearson_and_spearman_for_regression_outputs():
    labels = [1.0, 2.0, 3.0, 4.0]
    predictions = [[1.0], [3.0], [2.0], [8.0]]  # a regression head's (n, 1) output
    # deviations: predictions (-2.5, -.5, -1.5, 4.5) around 3.5, labels (-1.5, -.5, .5, 1.5) around 2.5
    pearson = (3.75 + 0.25 - 0.75 + 6.75) / math.sqrt((6.25 + 0.25 + 2.25 + 20.25) * 5.0)
    # ranks (1, 3, 2, 4) vs (1, 2, 3, 4): squared rank differences sum to 2
    spearman = 1 - 6 * (0 + 1 + 1 + 0) / (4 * (16 - 1))

    scores = compute_metrics(["pearson", "spearmanr"], predictions, labels)

    assert scores["pearson"] == pytest.approx(pearson)
    assert scores["spearmanr"] == pytest.approx(spearman)
    assert scores["combined_score"] == pytest.approx((pearson + spearman) / 2)


def test_task_metrics_follow_glue_conventions():
    expected = {"glue-cola": ("matthews_correlation",), "glue-mrpc": ("accuracy", "f1"),
                "glue-qqp": ("accuracy", "f1"), "glue-stsb": ("pearson", "spearmanr")}
    for name, spec in TASKS.items():
        if spec.is_generation:  # cedict, xsum, wmt16-ro-en declare their own (tests/test_data.py)
            continue
        assert spec.metrics == expected.get(name.removeprefix("t5-"), ("accuracy",)), name  # t5-glue-*: the same (metrics/metrics.py)

    scores = compute_metrics(TASKS["glue-mrpc"].metrics, PREDICTIONS, LABELS)
    assert set(scores) == {"accuracy", "f1", "combined_score"}


def test_unknown_or_mixed_metrics_are_rejected():
    with pytest.raises(ValueError, match="unknown metrics \\['bleu'\\]"):
        compute_metrics(["bleu"], PREDICTIONS, LABELS)
    with pytest.raises(ValueError, match="cannot mix"):
        compute_metrics(["accuracy", "pearson"], PREDICTIONS, LABELS)


def test_scores_are_plain_floats():
    scores = compute_metrics(["accuracy", "f1"], PREDICTIONS, LABELS)

    assert all(type(v) is float and math.isfinite(v) for v in scores.values())


def test_generation_metrics_are_rouge_score_and_sacrebleu_on_the_same_strings():
    predictions, references = ["the cat sat on the mat", "a dog runs", ""], ["the cat is on the mat", "the dog ran", "nothing"]
    scores = generation_metrics(("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match"), predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    each = [scorer.score(r, p) for p, r in zip(predictions, references)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert scores[key] == pytest.approx(np.mean([s[key].fmeasure for s in each]))
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score / 100)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score / 100)
    assert scores["exact_match"] == 0.0
    assert scores["combined_score"] == pytest.approx(np.mean([scores[k] for k in scores if k != "combined_score"]))


def test_a_metric_the_task_type_cannot_score_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"metrics=\['accuracy'\] not supported for a generation task; allowed: rouge1, rouge2"):
        check_metric_names("generation", ["accuracy"])
    with pytest.raises(ValueError, match=r"not supported for a classification task; allowed: accuracy, f1, matthews_correlation"):
        check_metric_names("classification", ["bleu"])


def test_a_correlation_with_constant_predictions_is_zero_not_nan():
    """An untrained model often predicts one value; the official T5 metrics score that 0, and NaN would leave no checkpoint."""
    scores = compute_metrics(["pearson", "spearmanr"], np.full(4, 2.5), np.array([0.0, 1.0, 2.0, 3.0]))
    assert scores == {"pearson": 0.0, "spearmanr": 0.0, "combined_score": 0.0}


def test_a_resampled_score_is_the_metrics_of_the_resampled_examples():
    """The bootstrap's fast rescoring (sentence statistics summed, as sacrebleu's paired bootstrap does) equals scoring
    the resampled texts from scratch, repeats included."""
    import numpy as np

    from propetl.metrics import compute_metrics, generation_metrics, resampled_score

    predicted = ["the cat sat", "a dog", "one small bird sings", "fish", "red car", "the cat sat down"]
    references = ["the cat sat down", "the dog", "a small bird sings", "two fish", "a red car", "cat"]
    names = ["rouge1", "rougeL", "bleu", "chrf", "exact_match"]
    score = resampled_score(names, predicted, references)
    for idx in (np.arange(6), np.array([5, 5, 0, 2, 2, 2])):
        expected = generation_metrics(names, [predicted[i] for i in idx], [references[i] for i in idx])["combined_score"]
        assert score(idx) == pytest.approx(expected, abs=1e-12)
    classes, labels = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1])
    idx = np.array([1, 2, 2, 4, 0])
    assert resampled_score(["f1", "accuracy"], classes, labels)(idx) == compute_metrics(["f1", "accuracy"], classes[idx], labels[idx])["combined_score"]

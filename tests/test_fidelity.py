"""Points where the official ProPETL code (ChaosCodes/ProPETL) fixes a behaviour; docs/fidelity.md cites each.

The module data flows are pinned numerically against independent implementations in
test_crosscheck.py; the paper study's hyperparameters in test_workflow.py (its plan).
"""

import json
import math

import pytest
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback

from propetl import PETLConfig, apply_petl
from propetl.config import PAPER_DEFAULTS, TrainConfig
from propetl.petl_model import layer_masks
from propetl.training import fit, train

HIDDEN, BOTTLENECK, R, P = 768, 64, 32, 64  # RoBERTa-base with the paper's module sizes


def _roberta_base_shaped(layers: int = 1) -> BertForSequenceClassification:
    config = BertConfig(vocab_size=10, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=8, max_position_embeddings=8)
    return BertForSequenceClassification(config)


@pytest.mark.parametrize(
    "method, bounds",
    [
        # AdapterSubnet: down_mask [in, out] = [768, 64], up_mask [64, 768], kaiming on that shape
        ("propetl-adapter", {"down": 1 / math.sqrt(BOTTLENECK), "up": 1 / math.sqrt(HIDDEN)}),
        # LoraSubnet: scores shaped like A [r, in] and B [out, r]
        ("propetl-lora", {"A": 1 / math.sqrt(HIDDEN), "B": 1 / math.sqrt(R)}),
        # PrefixSubnet: one [layers, P, 2h] tensor, fan-in P * 2h
        ("propetl-prefix", {"prefix": 1 / math.sqrt(P * 2 * HIDDEN)}),
    ],
)
def test_mask_scores_start_at_the_official_kaiming_scale(method, bounds):
    model = apply_petl(_roberta_base_shaped(), PETLConfig(method=method))
    for key, mask in layer_masks(model).items():
        bound = bounds[key.rsplit(".", 1)[1]]
        largest = mask.scores.detach().abs().max().item()
        assert 0.99 * bound < largest <= bound, key


def test_the_official_learning_rates_are_the_defaults():
    # run_{adapter,lora,prefix}.sh: --learning_rate 1e-4, --mask_learning_rate 3e-3 / 3e-2 / 1e-4,
    # sparsity (kept fraction) 0.5 / 0.1 / 0.1
    assert {m: PAPER_DEFAULTS[m]["lr"] for m in ("adapter", "lora", "prefix")} == {"adapter": 1e-4, "lora": 1e-4, "prefix": 1e-4}
    official = {"propetl-adapter": (3e-3, 0.5), "propetl-lora": (3e-2, 0.1), "propetl-prefix": (1e-4, 0.1)}
    for method, (mask_lr, kept) in official.items():
        assert PAPER_DEFAULTS[method]["mask_lr"] == mask_lr
        assert PETLConfig(method=method).sparsity == pytest.approx(1 - kept)


def test_evaluation_per_epoch_keeps_the_best_epoch(sentiment_csv, tmp_path):
    # --evaluation_strategy epoch --save_strategy epoch --load_best_model_at_end
    cfg = TrainConfig(model="tiny-bert", task=sentiment_csv, out=str(tmp_path / "run"), epochs=2, eval_strategy="epoch",
                      batch_size=32, lr=5e-3, threads=1)
    metrics = train(cfg, PETLConfig(method="adapter"))
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    steps_per_epoch = metrics["steps"] // 2
    assert [h["step"] for h in history] == [steps_per_epoch, 2 * steps_per_epoch]
    assert [h["epoch"] for h in history] == [1.0, 2.0]
    best = max(history, key=lambda h: h["combined_score"])
    assert metrics["best_step"] == best["step"] and metrics["val"]["combined_score"] == best["combined_score"]


def test_mask_scores_follow_the_same_warm_up_and_decay_as_every_other_group(sentiment_csv, tmp_path):
    # trainer.py: one LambdaLR over all groups, so the mask lr warms up and decays with the rest
    seen: list[dict[str, float]] = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen.append({group["name"]: group["lr"] / group["initial_lr"] for group in optimizer.param_groups})

    cfg = TrainConfig(model="tiny-bert", task=sentiment_csv, out=str(tmp_path / "run"), max_steps=6, eval_every=6,
                      warmup_ratio=0.5, batch_size=16, lr=1e-3, mask_lr=3e-2, threads=1)
    fit(cfg, PETLConfig(method="propetl-adapter"), callbacks=[Record()])
    assert len(seen) == 6 and {"petl", "mask_scores", "head"} <= seen[0].keys()
    for step in seen:
        assert max(step.values()) - min(step.values()) < 1e-12  # every group at the same point of the schedule
    factors = [next(iter(step.values())) for step in seen]
    assert factors.index(max(factors)) in (1, 2, 3) and factors[0] < max(factors) > factors[-1]  # up, then down

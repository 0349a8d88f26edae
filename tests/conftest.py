"""Shared fixtures: tiny random BERT/RoBERTa classifiers built in code, sentiment, topic and generation task files, a budget ladder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from propetl import backbones
from propetl.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIGS = {  # every committed study config
    "default": ROOT / "config.yaml",
    "paper": ROOT / "workflow/configs/paper.yaml",
    "ci": ROOT / "workflow/configs/ci.yaml",
    "ablation": ROOT / "workflow/configs/ablation.yaml",
    "budget": ROOT / "workflow/configs/budget.yaml",
    "multitask": ROOT / "workflow/configs/multitask.yaml",
    "decoder": ROOT / "workflow/configs/decoder.yaml",
    "paper_t5_glue": ROOT / "workflow/configs/paper_t5_glue.yaml",
    "paper_t5_3b": ROOT / "workflow/configs/paper_t5_3b.yaml",
    "paper_xsum": ROOT / "workflow/configs/paper_xsum.yaml",
    "paper_wmt16": ROOT / "workflow/configs/paper_wmt16.yaml",
    "generation": ROOT / "workflow/configs/generation.yaml",
}
SENTIMENT_CSV = ROOT / "tests" / "fixtures" / "sentiment.csv"  # 240 rows whose label single words give away
TOPIC_CSV = ROOT / "tests" / "fixtures" / "topic.csv"  # 150 rows, 3 topics (sport, tech, food) its words give away
GENERATION_JSONL = ROOT / "tests" / "fixtures" / "generation.jsonl"  # 60 rows: four words -> the first two swapped


def tiny_classifier(family: str = "bert", num_labels: int = 3, layers: int = 3, hidden: int = 32, seed: int = 0):
    """The package's tiny-model factory with the tests' defaults: 3 layers, no dropout, eval mode."""
    return backbones.tiny_classifier(f"tiny-{family}", num_labels, layers=layers, hidden=hidden, dropout=0.0, seed=seed).eval()


def quick_config(task: str, out, **kwargs) -> TrainConfig:
    """A run of a few steps on a tiny model: what the training and tuning tests train."""
    base = dict(model="tiny-bert", task=task, out=str(out), max_steps=16, eval_every=4, batch_size=16, lr=5e-3,
                logging_steps=4, threads=1)
    return TrainConfig(**{**base, **kwargs})


def tiny_batch(batch: int = 4, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with right padding of different lengths, so attention masks matter."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 100, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        attention_mask[row, length - 2 * row :] = 0
    input_ids[attention_mask == 0] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="session")
def sentiment_csv() -> str:
    return str(SENTIMENT_CSV)


@pytest.fixture(scope="session")
def topic_csv() -> str:
    return str(TOPIC_CSV)


@pytest.fixture(scope="session")
def generation_jsonl() -> str:
    return str(GENERATION_JSONL)


@pytest.fixture(params=["bert", "roberta"])
def family(request) -> str:
    return request.param


def _write_run(root: Path, label: str, method: str, seed: int, max_steps: int, score: float, **extra) -> None:
    sparsity = 0.5 if method.startswith("propetl") else None
    record = {"task": "rt", "label": label, "method": method, "sparsity": sparsity, "seed": seed, "max_steps": max_steps,
              "mask_mode": "learned" if sparsity else None, "share": "layers" if sparsity else None,
              "test": {"accuracy": score, "combined_score": score}, "storage": {"storage_pct": 1.0}, "artifact_bytes": 10,
              **extra}
    folder = root / "runs" / "rt" / label / ("s-" if sparsity is None else "s0.5") / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(record))


@pytest.fixture
def budget_ladder(tmp_path) -> Path:
    """A results root of a training-budget ladder: adapter and propetl-adapter at 100 and 200 steps
    (test score = combined score); seed 3 only for adapter at 200; one random-mask ablation run."""
    scores = {("adapter", 100): [0.80, 0.82], ("propetl-adapter", 100): [0.75, 0.78],
              ("adapter", 200): [0.84, 0.84, 0.90], ("propetl-adapter", 200): [0.85, 0.83]}
    for (method, steps), values in scores.items():
        for seed, score in enumerate(values, start=1):
            _write_run(tmp_path, f"{method}-{steps}", method, seed, steps, score)
    _write_run(tmp_path, "propetl-adapter-random", "propetl-adapter", 1, 200, 0.10, mask_mode="random")
    return tmp_path

"""Shared fixtures: tiny random BERT/RoBERTa classifiers built from configs in code (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

FAMILIES = {"bert": (BertConfig, BertForSequenceClassification), "roberta": (RobertaConfig, RobertaForSequenceClassification)}


def tiny_classifier(family: str = "bert", num_labels: int = 3, layers: int = 3, hidden: int = 32, seed: int = 0):
    config_class, model_class = FAMILIES[family]
    config = config_class(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1 if family == "roberta" else 0,
    )
    torch.manual_seed(seed)
    return model_class(config).eval()


def tiny_batch(batch: int = 4, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with right padding of different lengths, so attention masks matter."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 100, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        attention_mask[row, length - 2 * row :] = 0
    input_ids[attention_mask == 0] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(params=["bert", "roberta"])
def family(request) -> str:
    return request.param

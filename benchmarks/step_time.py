"""Side-by-side step times of every method in ONE process, reported as ratios to `adapter`, and each
method's peak memory. Training steps are timed in rounds (each round one step of every method in
turn, the median over rounds), so a slow spell of the machine costs every method alike.

A step runs as a run's training step does (:mod:`propetl.kernels`): on CPU SDPA's math kernel, or eager
attention where attention drops out, and dropout masks from PCG64; under bf16 the frozen linear weights
cast once for the whole measurement.
Steps are timed in fp32 and, where the machine computes bf16 natively, in bf16 (``machine_precisions``).

Timing assertions do not belong in tests (machines differ); ratios measured in one run on one
machine do. Besides the methods, two reference rows:

* ``floor``: the frozen backbone carrying activation gradients back to the embeddings, the
  least work a training step of any method with a module in every layer can do (its forward
  and its backward through every layer), so a method's ratio to it is what the method adds;
* ``prefix-floor``: the same frozen backbone attending over as many extra key/value positions as
  the prefix methods add (their prefixes, frozen): what attending over longer keys costs by itself,
  so a prefix method's ``ratio_to_prefix_floor`` is what its module adds;
The methods include the competitors through PEFT (``propetl.peft_methods``), among them ``peft-lora``:
PEFT's LoRA with our LoRA's settings, the independent implementation of the same computation.

Methods a backbone does not support (BitFit without biases, prefixes on DeBERTa, a PEFT method without
default targets for the family; ``peft``, which needs a type) have no rows.

Peak memory: each method trains in a fresh subprocess that reports the peak resident set of
three training steps after a first one (CPU, Linux: the high-water mark reset through
``/proc/self/clear_refs``, since loading the checkpoint peaks higher than training) or
``torch.cuda.max_memory_allocated`` over them (GPU). Usage:

    python benchmarks/step_time.py --model minilm-l6 --threads 1 --out results/benchmarks/step_time.csv
    python benchmarks/step_time.py --model smollm2-135m --batch 16 --threads 1 --out results/benchmarks/step_time_smollm2.csv
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import pandas as pd
import torch

from propetl import METHODS, PETLConfig, apply_petl, merge_masks
from propetl.atomic import write_text
from propetl.backbones import load_model
from propetl.kernels import frozen_weights_in, native_bf16, training_kernels
from propetl.param_groups import adamw

REFERENCES = ("floor", "prefix-floor")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
FLOORS = {"floor": "floor", "prefix-floor": "prefix-floor"}


def _time_in_rounds(steps: dict[tuple[str, str], Callable[[], None]], warmup: int, repeats: int) -> dict[tuple[str, str], float]:
    """Median seconds of each step over ``repeats`` rounds, each round running every step once in turn.

    Timing the methods one after the other let a slow spell of the machine land on a few of them
    (two runs minutes apart put the same method at 0.95x and 1.16x of its reference); in rounds a
    slow spell costs every method alike, and the median drops the spell's rounds.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def _time(step: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def build(name: str, model_name: str) -> torch.nn.Module:
    """A method's model, or a reference: ``floor`` (everything frozen) or ``prefix-floor``."""
    torch.manual_seed(0)
    model = load_model(model_name, 2)
    if name == "floor":
        return model.requires_grad_(False)
    if name == "prefix-floor":
        model = merge_masks(apply_petl(model, PETLConfig(method="prefix")))
        return model.requires_grad_(False)
    return apply_petl(model, PETLConfig(method=name))


def supported(model_name: str) -> tuple[str, ...]:
    """The references and every method the backbone takes (a refused pair fails at once, before any work)."""
    names = []
    for name in (*REFERENCES, *METHODS):
        try:
            build(name, model_name)
        except ValueError:
            continue
        names.append(name)
    return tuple(names)


def _inputs(model: torch.nn.Module, batch: int, length: int, floor: bool) -> dict[str, torch.Tensor]:
    """Token ids without padding (a decoder's pad token is often its end of text: none may appear)."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(min(1000, vocab // 2), min(20000, vocab), (batch, length), generator=generator)
    ids[ids == model.config.pad_token_id] += 1
    inputs = {"attention_mask": torch.ones(batch, length, dtype=torch.long)}
    if floor:  # the gradient has to reach the embeddings: through every layer, as with a module in layer 0
        return inputs | {"inputs_embeds": model.get_input_embeddings()(ids).detach().requires_grad_()}
    return inputs | {"input_ids": ids}


def train_step(model: torch.nn.Module, inputs: dict, labels: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw([{"params": trainable, "lr": 1e-5}]) if trainable else None  # as a run trains
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def step() -> None:
        with training_kernels(torch.device(device)), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
        inputs.get("inputs_embeds", torch.empty(0)).grad = None

    return step


def measure(model_name: str, names: tuple[str, ...], batch: int, length: int, warmup: int, repeats: int,
            precisions: tuple[str, ...] = tuple(PRECISIONS)) -> pd.DataFrame:
    labels = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(1))
    models = {name: build(name, model_name).train() for name in names}
    inputs = {name: _inputs(model, batch, length, floor=name in FLOORS) for name, model in models.items()}
    rows = []
    for precision in precisions:
        dtype = PRECISIONS[precision]
        # as a run trains: under bf16 the frozen linear weights are cast once (propetl.kernels)
        with contextlib.ExitStack() as held:
            for model in models.values():
                held.enter_context(frozen_weights_in(model, dtype))
            steps = {(name, f"train step {precision}"): train_step(model, inputs[name], labels, dtype)
                     for name, model in models.items()}
            rows += [{"method": name, "what": what, "seconds": seconds}
                     for (name, what), seconds in _time_in_rounds(steps, warmup, repeats).items()]
    for name, model in models.items():
        if name in REFERENCES:
            continue
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(**inputs[name])

        rows.append({"method": name, "what": "inference", "seconds": _time(infer, warmup, repeats)})
        merge_masks(model)
        rows.append({"method": name, "what": "inference merged", "seconds": _time(infer, warmup, repeats)})
    table = pd.DataFrame(rows)
    for reference in ("adapter", "floor", "prefix-floor"):
        seconds = table[table.method == reference].set_index("what")["seconds"]
        table[f"ratio_to_{reference.replace('-', '_')}"] = table["seconds"] / table["what"].map(seconds)
    return table


def machine_precisions() -> tuple[str, ...]:
    """fp32, and bf16 where the machine computes it natively (as ``bf16: auto`` trains): on an AVX2-only CPU
    a bf16 step would only time torch's reference fallback."""
    return tuple(PRECISIONS) if native_bf16() else ("fp32",)


def peak_memory(name: str, model_name: str, batch: int, length: int, threads: int, precision: str = "bf16") -> float:
    """Peak memory (MB) of a fresh process that builds ``name`` and trains 3 steps in ``precision``."""
    code = (f"import sys; sys.argv = ['x']; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); import step_time; "
            f"step_time._peak_child({name!r}, {model_name!r}, {batch}, {length}, {threads}, {precision!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def _peak_child(name: str, model_name: str, batch: int, length: int, threads: int, precision: str) -> None:
    torch.set_num_threads(threads)
    model = build(name, model_name).train()
    dtype = PRECISIONS[precision]
    step = train_step(model, _inputs(model, batch, length, floor=name in FLOORS), torch.randint(0, 2, (batch,)), dtype)
    with frozen_weights_in(model, dtype):  # as a run trains (propetl.kernels): part of its memory
        step()  # the first step allocates gradients and optimiser states
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _reset_peak_rss()  # loading the checkpoint peaks higher than training does: measure from here
        for _ in range(3):
            step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else _peak_rss_mb()
    print(json.dumps({"peak_mb": peak}))


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak resident set (VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=32, help="tokens per example (rt-polarity median is 26)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="results/benchmarks/step_time.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = supported(args.model)
    precisions = machine_precisions()
    trained_in = precisions[-1]  # bf16 where the machine has it, as `bf16: auto` trains; else fp32
    table = measure(args.model, names, args.batch, args.length, args.warmup, args.repeats, precisions)
    memory = {name: peak_memory(name, args.model, args.batch, args.length, args.threads, trained_in) for name in names}
    table["peak_memory_mb"] = table["method"].map(memory)
    table.insert(0, "model", args.model)
    write_text(args.out, table.to_csv(index=False, float_format="%.4f"))
    steps = table[table["what"] == f"train step {trained_in}"].set_index("method")
    print(steps[["seconds", "ratio_to_floor", "ratio_to_prefix_floor", "ratio_to_adapter", "peak_memory_mb"]].round(3).to_markdown())


if __name__ == "__main__":
    main()

"""Side-by-side step times of every method in ONE process, reported as ratios to `adapter`.

Timing assertions do not belong in tests (machines differ); ratios measured in one
run on one machine do. Usage:

    python benchmarks/step_time.py --model minilm-l6 --threads 1 --out results/benchmarks/step_time.csv
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from propetl import METHODS, PETLConfig, apply_petl, merge_masks
from propetl.atomic import write_text
from propetl.backbones import load_model


def _time(step, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def measure(model_name: str, batch: int, length: int, warmup: int, repeats: int) -> pd.DataFrame:
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 20000, (batch, length), generator=generator), "attention_mask": torch.ones(batch, length, dtype=torch.long)}
    labels = torch.randint(0, 2, (batch,), generator=generator)
    rows = []
    for method in METHODS:
        torch.manual_seed(0)
        model = apply_petl(load_model(model_name, 2), PETLConfig(method=method)).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            def step():
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    loss = model(**inputs, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()

            rows.append({"method": method, "what": f"train step {precision}", "seconds": _time(step, warmup, repeats)})
        model.eval()

        def infer():
            with torch.inference_mode():
                model(**inputs)

        rows.append({"method": method, "what": "inference", "seconds": _time(infer, warmup, repeats)})
        merge_masks(model)
        rows.append({"method": method, "what": "inference merged", "seconds": _time(infer, warmup, repeats)})
    table = pd.DataFrame(rows)
    reference = table[table.method == "adapter"].set_index("what")["seconds"]
    table["ratio_to_adapter"] = table["seconds"] / table["what"].map(reference)
    return table


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
    table = measure(args.model, args.batch, args.length, args.warmup, args.repeats)
    write_text(args.out, table.to_csv(index=False, float_format="%.4f"))
    print(table.pivot(index="method", columns="what", values="ratio_to_adapter").round(2).to_markdown())


if __name__ == "__main__":
    main()

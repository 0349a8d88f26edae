"""benchmarks/step_time.py runs end to end on a tiny model: every method (PEFT's among them), the floors, peak memory.

Only the shape of the output is checked here; the times themselves are the benchmark's, never a test's.
"""

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("step_time", ROOT / "benchmarks" / "step_time.py")
step_time = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_time)


def test_every_method_and_the_references_are_timed_side_by_side_with_ratios():
    names = step_time.supported("tiny-bert")
    methods = tuple(m for m in step_time.METHODS if m != "peft")  # "peft" names no PEFT type: no row
    assert names == (*step_time.REFERENCES, *methods) and "peft-lora" in names
    table = step_time.measure("tiny-bert", names, batch=4, length=8, warmup=1, repeats=1)
    steps = table[table["what"] == "train step bf16"].set_index("method")
    assert set(steps.index) == {"floor", "prefix-floor", *methods}
    assert steps.loc["floor", "ratio_to_floor"] == 1.0 and steps.loc["adapter", "ratio_to_adapter"] == 1.0
    assert steps.loc["prefix-floor", "ratio_to_prefix_floor"] == 1.0
    assert (table["seconds"] > 0).all()
    assert not (table["method"].isin(step_time.REFERENCES) & table["what"].str.startswith("inference")).any()


def test_peak_memory_is_measured_in_a_fresh_process_per_method_in_the_precision_asked():
    floor = step_time.peak_memory("floor", "tiny-bert", 4, 8, threads=1, precision="bf16")
    full = step_time.peak_memory("full", "tiny-bert", 4, 8, threads=1, precision="fp32")
    assert floor > 0 and full > 0


def test_a_machine_without_native_bf16_is_timed_in_fp32_only(monkeypatch):
    monkeypatch.setattr(step_time, "native_bf16", lambda: False)
    assert step_time.machine_precisions() == ("fp32",)
    table = step_time.measure("tiny-bert", ("floor", "prefix-floor", "adapter"), batch=2, length=6, warmup=1, repeats=1,
                              precisions=step_time.machine_precisions())
    assert set(table["what"]) == {"train step fp32", "inference", "inference merged"}


def test_a_decoder_is_benchmarked_with_the_methods_it_takes():
    names = step_time.supported("tiny-llama")
    assert "bitfit" not in names and {"prefix-floor", "peft-lora", "propetl-lora", "propetl-prefix"} <= set(names)
    table = step_time.measure("tiny-llama", ("floor", "prefix-floor", "peft-lora", "prefix"), batch=2, length=6, warmup=1, repeats=1)
    assert (table["seconds"] > 0).all()

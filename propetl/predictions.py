"""What a run keeps of its test split: one row per test example (and task), its prediction and its reference.

The values are those the task's metrics score (:class:`propetl.task_kinds.Scorer`): a class id (text-to-text
classification: -1 where the generated text is no label word), a score, or a generated text. ``example`` is the
row of the (length-sorted) test split, not the position in evaluation order, which depends on the seed: runs of one
study on one task (same split seed and backbone) then name each test example alike, which is what lets
:mod:`propetl.comparison` pair them example by example; the references are kept to check exactly that.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_write

COLUMNS = ["task", "example", "prediction", "reference"]


def write_predictions(path: str | Path, per_task: Mapping[str, tuple[Any, Any, Any]]) -> Path:
    """Write ``{task: (predicted, references, rows)}`` atomically as parquet, sorted by test row; ``rows[i]`` is the
    test split row of the i-th prediction (evaluation order)."""
    frames = [pd.DataFrame({"task": task, "example": np.asarray(rows), "prediction": list(np.asarray(predicted).tolist()),
                            "reference": list(np.asarray(references).tolist())})
              for task, (predicted, references, rows) in per_task.items()]
    frame = pd.concat(frames, ignore_index=True)[COLUMNS].sort_values(["task", "example"], kind="stable", ignore_index=True)
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_predictions(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run kept no test predictions (runs before they were kept have none)")
    frame = pd.read_parquet(path)
    if list(frame.columns) != COLUMNS:
        raise ValueError(f"{path} has columns {list(frame.columns)}; expected {COLUMNS}")
    return frame

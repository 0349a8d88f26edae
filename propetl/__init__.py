"""propetl-bench: ProPETL ("One Network, Many Masks", ACL 2023) and the PETL baselines it is compared with.

The public names are imported lazily: ``import propetl.config`` (the pipeline
does it at every parse) must not pay for importing torch and transformers.
"""

from importlib import import_module

_PUBLIC = {
    "METHODS": "config",
    "PETLConfig": "config",
    "apply_petl": "petl_model",
    "apply_multitask_petl": "petl_model",
    "set_task": "multitask",
    "merge_masks": "petl_model",
    "storage_report": "storage",
    "save_petl": "artifacts",
    "load_petl": "artifacts",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'propetl' has no attribute {name!r}")

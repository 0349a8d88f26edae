"""propetl-bench: ProPETL ("One Network, Many Masks", ACL 2023) and the PETL baselines it is compared with."""

from .artifacts import load_petl, save_petl
from .config import METHODS, PETLConfig
from .model import apply_petl, merge_masks
from .storage import storage_report

__all__ = ["METHODS", "PETLConfig", "apply_petl", "load_petl", "merge_masks", "save_petl", "storage_report"]

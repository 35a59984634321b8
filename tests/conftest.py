from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.models import make_tiny_ast, make_tiny_wav2vec2

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own index and model registry, never the user's."""
    monkeypatch.setenv("GENRETAG_HOME", str(tmp_path / "genretag-home"))
    monkeypatch.delenv("GENRETAG_DB", raising=False)
    monkeypatch.delenv("GENRETAG_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    return make_tiny_wav2vec2(tmp_path_factory.mktemp("w2v"))


@pytest.fixture(scope="session")
def tiny_ast(tmp_path_factory) -> Path:
    return make_tiny_ast(tmp_path_factory.mktemp("ast"))


@pytest.fixture(scope="session")
def mixed_library_src(tmp_path_factory) -> Path:
    """Tracks of 2 s, 30 s and 4 min in mp3, flac, ogg, opus, m4a and wav (made once per session)."""
    from tagger.demo import encode, synth

    root = tmp_path_factory.mktemp("library")
    plan = [("pulse", 2.0, "mp3"), ("rockish", 30.0, "flac"), ("ambientish", 240.0, "ogg"),
            ("swingish", 2.0, "opus"), ("breakish", 30.0, "m4a"), ("pulse", 240.0, "wav"),
            ("rockish", 240.0, "mp3"), ("swingish", 45.0, "m4a")]
    for i, (style, seconds, fmt) in enumerate(plan):
        folder = root / ("A" if i % 2 else "b") / style
        folder.mkdir(parents=True, exist_ok=True)
        encode(synth(style, seconds, seed=i, sample_rate=16000), folder / f"t{i}.{fmt}", sample_rate=16000)
    return root


@pytest.fixture
def library(mixed_library_src, tmp_path) -> Path:
    """A private copy of the mixed library that a test may write to."""
    return Path(shutil.copytree(mixed_library_src, tmp_path / "lib"))

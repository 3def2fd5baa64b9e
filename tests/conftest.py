"""Shared test configuration."""

from __future__ import annotations

import os

import pytest
import torch

# Small models are fastest single-threaded, and 2-thread OpenMP pools thrash when the two cores are
# shared with env worker threads (measured: 2 ms vs 10-260 ms per K-FAC update of a tiny MLP).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly without CUDA (they are also deselected by default via ``-m``)."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

"""Shared test configuration."""

from __future__ import annotations

import os

# Small models are fastest single-threaded, and 2-thread OpenMP/OpenBLAS pools thrash when the two
# cores are shared with env worker threads (measured: 2 ms vs 10-260 ms per K-FAC update of a tiny
# MLP; 30 ms vs 0.13 ms for a small numpy product). Set before numpy/torch are imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly without CUDA (they are also deselected by default via ``-m``)."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

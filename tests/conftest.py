"""Shared test configuration."""

from __future__ import annotations

import os

# Small models are fastest single-threaded, and 2-thread OpenMP/OpenBLAS pools thrash when the two
# cores are shared with env worker threads (measured: 2 ms vs 10-260 ms per K-FAC update of a tiny
# MLP; 30 ms vs 0.13 ms for a small numpy product). Set before numpy/torch are imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test starts single-threaded (tiny networks run fastest so, and the cores are shared), and a test
    that changes the thread count (e.g. through ``acktr train --threads``) does not leak it to the next."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64_default() -> Iterator[None]:
    """float64 as torch's default dtype for one test: references computed densely in float64, so that
    1e-10 agreement is meaningful (``pytestmark = pytest.mark.usefixtures("float64_default")``)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly without CUDA (they are also deselected by default via ``-m``)."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

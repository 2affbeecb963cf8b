"""Run these tests' tiny CPU workloads on one intra-op thread (restored afterwards).

With two cores shared by another process, multi-threaded tiny GEMMs spin-wait and run 5-10x
slower than on one thread; a single thread costs nothing at these sizes.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Run every test's CPU workload on one intra-op thread (restored afterwards).

The tests use tiny tensors; with two cores shared by other processes (CI's neighbours, DDP
workers), multi-threaded tiny ops spin-wait and run 10-300x slower than on one thread.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

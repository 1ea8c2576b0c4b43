import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # decoding_helpers


@pytest.fixture(autouse=True)
def _one_thread():
    """Decoding runs many tiny matmuls (a few rows); on the shared 2-core CI machine, two OpenMP threads
    contend with other processes and make each such matmul ~1000x slower. One thread keeps the suite fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

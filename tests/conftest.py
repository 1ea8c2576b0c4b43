import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # fixtures, paths


@pytest.fixture
def one_thread():
    """Run a test single-threaded. Decoding and generation run many tiny matmuls (a few rows); when other
    processes share this 2-core machine, two OpenMP threads contend with them and such matmuls get
    orders of magnitude slower. Use through `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_tf32():
    """True fp32 matmuls on CUDA (TF32 rounds like ~bf16 there; fp32 exactness is claimed for true fp32)."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous

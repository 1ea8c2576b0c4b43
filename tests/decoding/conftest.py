import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # decoding_helpers


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every decoding test runs single-threaded (see `one_thread` in tests/conftest.py)."""

import os
import sys

import pytest
from fixtures import tiny_model

from eaglespec.models import bundled_model_path

sys.path.insert(0, os.path.dirname(__file__))  # export_helpers


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Decoding in these tests runs single-threaded (see `one_thread` in tests/conftest.py)."""


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """The tiny 8-layer Llama fixture saved as a Hugging Face directory (8 layers: default aux ids [2, 4, 5])."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def stories_dir():
    return bundled_model_path()

"""Shared setup for the serving tests: stories260K (a copy with a small chat template) + an untrained EAGLE-3 draft
from `eaglespec init-draft`, one generator per session, servers on free loopback ports in this process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys

import pytest
import torch

pytest.importorskip("fastapi", reason="the serving tests need the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serving tests need the serve extra: pip install -e '.[serve]'")
pytest.importorskip("prometheus_client", reason="the serving tests need the serve extra: pip install -e '.[serve]'")

sys.path.insert(0, os.path.dirname(__file__))  # serving_helpers

from serving_helpers import MODEL  # noqa: E402

# stories260K has no chat template; this one turns a conversation into the story-like text the model knows
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}\n{% else %}{{ m['content'] }} {% endif %}{% endfor %}"
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_per_module():
    """Decoding runs many tiny matmuls; one thread avoids contention on the shared 2-core machine (see
    tests/conftest.py `one_thread`). Module scope, because the servers outlive single tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> tuple[str, str]:
    """(target dir with a chat template, init-draft EAGLE-3 draft dir)."""
    from eaglespec.models import bundled_model_path
    from eaglespec.cli import main

    root = tmp_path_factory.mktemp("serving")
    target = root / "stories-chat"
    shutil.copytree(bundled_model_path(), target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    draft = root / "draft"
    assert main(["init-draft", "--base", str(target), "--method", "eagle3", "--output", str(draft)]) == 0
    return str(target), str(draft)


@pytest.fixture(scope="session")
def generator(model_dirs):
    from eaglespec.decoding import SpeculativeGenerator

    return SpeculativeGenerator.from_pretrained(*model_dirs)


@pytest.fixture(scope="module")
def start_server(generator):
    """start_server(**ServeConfig fields) -> base URL; every server started stops at the end of the module."""
    from eaglespec.serving import ServeConfig, ServerThread

    with contextlib.ExitStack() as stack:
        def start(**overrides) -> str:
            config = ServeConfig(**{"port": 0, "served_model_name": MODEL, **overrides})
            return stack.enter_context(ServerThread(generator, config))

        yield start


@pytest.fixture(scope="module")
def server(start_server) -> str:
    return start_server()

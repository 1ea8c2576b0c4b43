"""`regenerate --server URL`: the same requests to an OpenAI-compatible server (here `eaglespec serve` on a
loopback port in this process): the answers are the local target's greedy ones, N requests are in flight, every
record says who answered, and a run resumes as a local one does."""

from __future__ import annotations

import re
import shutil
import urllib.request

import pytest
from distill_helpers import CHAT_TEMPLATE, chats, make_generator, options, read_by_id, read_jsonl, write_jsonl
from fixtures import stories260k

from eaglespec import distill
from eaglespec.cli import main
from eaglespec.distill.server import ServerConfig, ServerEngine

pytest.importorskip("fastapi", reason="the server tests need the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the server tests need the serve extra: pip install -e '.[serve]'")

MODEL = "stories-chat"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """(a generator of stories260K + an untrained draft, the target directory with a chat template)."""
    from transformers import AutoTokenizer

    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.models import bundled_model_path

    root = tmp_path_factory.mktemp("served")
    target, draft = root / MODEL, root / "draft"
    shutil.copytree(bundled_model_path(), target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(target)
    assert main(["init-draft", "--base", str(target), "--method", "eagle3", "--output", str(draft)]) == 0
    return SpeculativeGenerator.from_pretrained(target, draft), target


@pytest.fixture(scope="module")
def served(served_model):
    """(URL of `eaglespec serve` on loopback, the target directory)."""
    from eaglespec.serving import ServeConfig, ServerThread

    generator, target = served_model
    config = ServeConfig(port=0, served_model_name=MODEL, max_concurrency=4, max_batch_size=4)
    with ServerThread(generator, config) as url:
        yield url, target


class CountingServer(ServerEngine):
    def __init__(self, *args):
        super().__init__(*args)
        self.in_flight_at_collect: list[int] = []

    def collect(self):
        self.in_flight_at_collect.append(self.in_flight)
        return super().collect()


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_server_answers_are_the_local_greedy_answers_and_say_who_answered(served, tmp_path, api):
    url, target = served
    src = write_jsonl(tmp_path / "in.jsonl", chats({"a": 2, "b": 1, "c": 1, "d": 2, "e": 1}))
    opts = options(max_new_tokens=10)
    local = make_generator(stories260k(), distill_tokenizer(target))
    distill.regenerate_file(local, src, tmp_path / "local.jsonl", "chat", opts, batch_size=2)
    engine = CountingServer(ServerConfig(url, api=api, concurrency=3), opts)
    jobs = distill.file_jobs(src, "chat", local.tokenizer)
    try:
        summary = distill.run_plan(distill.plan_regeneration(jobs, tmp_path / "server.jsonl"), engine)
    finally:
        engine.close()
    assert summary.generated == 5
    served_records = read_by_id(tmp_path / "server.jsonl")
    who = {"engine": "eaglespec", "model": MODEL, "server": url + "/v1"}
    assert all(r.pop("generated_by") == who for r in served_records)
    assert served_records == read_by_id(tmp_path / "local.jsonl")
    assert max(engine.in_flight_at_collect) == 3  # N requests at a time


def distill_tokenizer(target):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target)


def test_server_run_resumes_without_duplicates_or_losses(served, tmp_path):
    url, target = served
    src = write_jsonl(tmp_path / "in.jsonl", chats({f"r{i}": 1 + i % 2 for i in range(8)}))
    out = tmp_path / "o.jsonl"
    argv = ["regenerate", "--model", str(target), "--input", str(src), "--data-format", "chat", "--server", url,
            "--concurrency", "2", "--max-new-tokens", "6", "--output", str(out)]
    engine = ServerEngine(ServerConfig(url, concurrency=2), options(max_new_tokens=6))

    class Stop(Exception):
        pass

    def stop(n):
        raise Stop

    plan = distill.plan_regeneration(distill.file_jobs(src, "chat", distill_tokenizer(target)), out)
    with pytest.raises(Stop):
        distill.run_plan(plan, engine, progress=stop)
    engine.close()
    written = len(read_jsonl(out))
    with open(out, "ab") as f:  # what a kill in the middle of a write would leave
        f.write(b'{"id": "r')
    assert main(argv) == 0
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == [f"r{i}" for i in range(8)] and 1 <= written < 8


def test_server_errors_name_the_url(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", chats({"a": 1}))
    argv = ["regenerate", "--model", "stories260K", "--input", str(src), "--data-format", "chat", "--chat-template",
            str(write_template(tmp_path)), "--server", "http://127.0.0.1:9", "--output", str(tmp_path / "o.jsonl")]
    assert main(argv) == 1
    assert "http://127.0.0.1:9/v1/models: cannot reach the server" in capsys.readouterr().err
    assert main(argv[:-2] + ["--data-format", "fim", "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "--server with --data-format fim" in capsys.readouterr().err


def write_template(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(CHAT_TEMPLATE)
    return path


def test_a_busy_server_is_asked_again(served_model, tmp_path):
    """A server that takes one request and queues none answers the others 429; they are sent again."""
    from eaglespec.serving import ServeConfig, ServerThread

    generator, target = served_model
    src = write_jsonl(tmp_path / "in.jsonl", chats({f"r{i}": 1 for i in range(4)}))
    config = ServeConfig(port=0, served_model_name=MODEL, max_concurrency=1, queue_size=0)
    with ServerThread(generator, config) as url:
        engine = ServerEngine(ServerConfig(url, concurrency=4), options(max_new_tokens=4))
        plan = distill.plan_regeneration(distill.file_jobs(src, "chat", distill_tokenizer(target)), tmp_path / "o.jsonl")
        try:
            assert distill.run_plan(plan, engine).generated == 4
        finally:
            engine.close()
        with urllib.request.urlopen(url + "/metrics") as response:
            metrics = response.read().decode()
    busy = re.search(r'eaglespec_requests_total\{endpoint="/v1/completions",status="429"\} (\d+)', metrics)
    assert busy and int(busy.group(1)) >= 1, metrics  # the server did refuse some, and every record was written

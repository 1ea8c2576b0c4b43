"""The run's prompt stream: continuous batching gives the batch-size-1 greedy answers, a chat's next turn joins
ahead of records not started yet, first prompts go shortest first, the batch stays full, and records reach the
file as they complete."""

from __future__ import annotations

import pytest
from distill_helpers import chat_tokenizer, chats, make_generator, options, read_by_id, read_jsonl, write_jsonl
from fixtures import stories260k

from eaglespec import distill
from eaglespec.distill.local import LocalEngine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator():
    return make_generator(stories260k(), chat_tokenizer())


class RecordingEngine(LocalEngine):
    """The local engine, noting the order prompts are submitted in and how many are in flight at each step."""

    def __init__(self, *args):
        super().__init__(*args)
        self.submitted: list[str] = []
        self.in_flight_at_step: list[int] = []

    def submit(self, key, prompt, record_id):
        self.submitted.append(prompt.seed_key)
        super().submit(key, prompt, record_id)

    def collect(self):
        self.in_flight_at_step.append(self.in_flight)
        return super().collect()


def test_continuous_batching_gives_the_batch_size_1_greedy_answers(generator, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", chats({"a": 2, "b": 1, "c": 3, "d": 1, "e": 2, "f": 1}))
    opts = options(max_new_tokens=20)
    alone = distill.regenerate_file(generator, src, tmp_path / "one.jsonl", "chat", opts, batch_size=1)
    together = distill.regenerate_file(generator, src, tmp_path / "four.jsonl", "chat", opts, batch_size=4)
    assert read_by_id(tmp_path / "four.jsonl") == read_by_id(tmp_path / "one.jsonl")
    assert alone.generated == together.generated == 6
    assert all(r["messages"][1]["content"] != "old" for r in read_jsonl(tmp_path / "four.jsonl"))


def test_next_turn_goes_ahead_of_records_not_started_and_first_prompts_go_shortest_first(generator, tmp_path):
    # chats() makes later records' user turns longer ("a" < "b"); "c" is made the longest
    records = chats({"c": 1, "a": 1, "b": 2})
    records[0]["messages"][0]["content"] += " and a cat" * 8
    src = write_jsonl(tmp_path / "in.jsonl", records)
    jobs = distill.file_jobs(src, "chat", generator.tokenizer)
    engine = RecordingEngine(generator, options(max_new_tokens=6), 1)
    distill.run_plan(distill.plan_regeneration(jobs, tmp_path / "o.jsonl"), engine)
    # one row: turn 2 of "b" right after its turn 1, before "c" (input order first) starts
    assert engine.submitted == ["0:a", "0:b", "1:b", "0:c"]


def test_the_batch_stays_full_while_prompts_wait(generator, tmp_path):
    jobs = distill.bos_jobs(10, generator.tokenizer)
    engine = RecordingEngine(generator, options(temperature=1.0, max_new_tokens=16, seed=2), 3)
    distill.run_plan(distill.plan_regeneration(jobs, tmp_path / "o.jsonl"), engine)
    steps = engine.in_flight_at_step
    last_full = max(i for i, n in enumerate(steps) if n == 3)
    assert all(n == 3 for n in steps[: last_full + 1])  # a finished row was replaced before the next step
    assert steps[last_full + 1:] == sorted(steps[last_full + 1:], reverse=True)  # then the batch drains
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 10


def test_records_are_written_as_they_complete(generator, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", chats({"short": 1, "long": 3}))
    out = tmp_path / "o.jsonl"
    seen = []
    plan = distill.plan_regeneration(distill.file_jobs(src, "chat", generator.tokenizer), out)
    distill.run_plan(plan, LocalEngine(generator, options(max_new_tokens=8), 2),
                     progress=lambda n: seen.append([r["id"] for r in read_jsonl(out)]))
    assert seen == [["short"], ["short", "long"]]  # "short" was on disk while "long" still had turns to go


def test_a_chat_with_nothing_to_regenerate_is_written_as_it_is(generator, tmp_path):
    tool_call = {"type": "function", "function": {"name": "weather", "arguments": "{}"}}
    only_tools = {"id": "tools", "messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "", "tool_calls": [tool_call]}]}
    src = write_jsonl(tmp_path / "in.jsonl", [only_tools, *chats({"a": 1})])
    summary = distill.regenerate_file(generator, src, tmp_path / "o.jsonl", "chat", options(max_new_tokens=4))
    tools, a = read_by_id(tmp_path / "o.jsonl")[::-1]
    assert tools["messages"] == only_tools["messages"] and a["messages"][1]["content"] != "old"
    assert summary.generated == 2

"""Acceptance 1: the official `openai` client against the server, non-streaming and streaming, completions and
chat; greedy text equals `eaglespec generate` (SpeculativeGenerator.generate); stop and max_tokens exact."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from serving_helpers import MODEL, http_request, read_sse

openai = pytest.importorskip("openai", reason="the serving tests use the official openai client (dev extra)")

PROMPTS = ["Once upon a time, there was a little girl named Lily.", "Tom and Sue were playing in the garden.",
           "The cat and the dog were friends."]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client, generator):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].eaglespec["context_length"] == generator.context_length == 512
    assert client.models.retrieve(MODEL).id == MODEL


def test_greedy_completion_equals_eaglespec_generate_cli(client, model_dirs, capsys):
    from eaglespec.cli import main

    capsys.readouterr()
    assert main(["generate", "--base", model_dirs[0], "--draft", model_dirs[1], "--prompt", PROMPTS[0],
                 "--max-new-tokens", "40", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    response = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=40, temperature=0)
    choice = response.choices[0]
    assert choice.text == expected["text"] and choice.finish_reason == "length"
    assert response.usage.completion_tokens == 40 == expected["new_tokens"]
    extra = response.eaglespec
    assert extra["token_ids"] == expected["token_ids"]
    assert extra["target_forwards"] == expected["target_forwards"]
    assert extra["tau"] == pytest.approx(expected["tau"])
    assert extra["accept_lengths"] == expected["stats"]["accept_lengths"]
    assert len(extra["from_draft"]) == 40 and extra["draft_tokens"] == sum(extra["from_draft"])


@pytest.mark.parametrize("max_tokens", [1, 7, 33])
def test_streaming_completion_equals_generate_and_max_tokens_is_exact(client, generator, max_tokens):
    expected = generator.generate(PROMPTS[1], max_new_tokens=max_tokens)
    stream = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected.text
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == max_tokens
    step_chunks = [c for c in chunks if c.choices and c.eaglespec and "token_ids" in c.eaglespec]
    assert [t for c in step_chunks for t in c.eaglespec["token_ids"]] == expected.token_ids
    assert [f for c in step_chunks for f in c.eaglespec["from_draft"]] == expected.from_draft
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    assert final.choices[0].finish_reason == "length"
    assert final.eaglespec["tau"] == pytest.approx(expected.stats.tau)


def test_prompt_as_token_ids(client, generator):
    ids = generator.tokenizer(PROMPTS[2])["input_ids"]
    expected = generator.generate(ids, max_new_tokens=20)
    response = client.completions.create(model=MODEL, prompt=ids, max_tokens=20, temperature=0)
    assert response.choices[0].text == expected.text
    assert response.usage.prompt_tokens == len(ids)


def _stop_case(generator) -> tuple[str, str, str]:
    """A stop string that really occurs inside the greedy answer (not at its start): (prompt, stop, answer)."""
    full = generator.generate(PROMPTS[0], max_new_tokens=60).text
    words = full.split(" ")
    stop = " " + words[len(words) // 2]
    return PROMPTS[0], stop, full[: full.index(stop)]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_is_exact(client, generator, stream):
    prompt, stop, answer = _stop_case(generator)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=60, temperature=0, stop=[stop, "zzz"],
                                         stream=stream)
    if stream:
        chunks = list(response)
        text = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        text, finish = response.choices[0].text, response.choices[0].finish_reason
    assert text == answer and finish == "stop"


def test_stop_string_never_leaks_while_streaming(server, generator):
    """A stop string that arrives over several steps: no streamed chunk may contain any part of it."""
    prompt, stop, answer = _stop_case(generator)
    parts = urlsplit(server)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 60, "temperature": 0, "stop": stop, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    events = read_sse(conn.getresponse())
    conn.close()
    assert events[-1] == "[DONE]"
    texts = [e["choices"][0]["text"] for e in events[:-1]]
    assert "".join(texts) == answer
    emitted = ""
    for t in texts:
        emitted += t
        assert answer.startswith(emitted)


def test_chat_completion_uses_the_chat_template(client, generator):
    messages = [{"role": "system", "content": "A story."}, {"role": "user", "content": "Sam was sad."}]
    expected = generator.generate(messages, max_new_tokens=30)
    ids = generator.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0)
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == expected.text
    assert response.usage.prompt_tokens == len(ids) and response.usage.completion_tokens == 30
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_stop_and_max_completion_tokens(client, generator):
    messages = [{"role": "user", "content": "Lily saw a big box in her room."}]
    full = generator.generate(messages, max_new_tokens=40).text
    stop = full.split(" ")[3]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=40,
                                              temperature=0, stop=stop)
    assert response.choices[0].message.content == full[: full.index(stop)]
    assert response.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_equals_generate(client, generator):
    kwargs = dict(temperature=0.9, top_p=0.95, seed=1234)
    expected = generator.generate(PROMPTS[2], max_new_tokens=25, **kwargs)
    first = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=25, **kwargs)
    second = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=25, stream=True, **kwargs)
    assert first.choices[0].text == expected.text
    assert "".join(c.choices[0].text for c in second) == expected.text


def test_health(server):
    assert http_request(server, "GET", "/health") == (200, {"status": "ok", "waiting": 0, "active": 0})


def test_eos_ends_the_answer_with_finish_reason_stop(generator, model_dirs, tmp_path):
    """A target whose generation_config names the token of '.' as a second EOS: the answer ends at the first one."""
    import shutil

    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.serving import ServeConfig, ServerThread

    full = generator.generate(PROMPTS[1], max_new_tokens=40)
    dot = next(t for t in full.token_ids if generator.tokenizer.decode([t]).strip() == ".")
    target = tmp_path / "eos-model"
    shutil.copytree(model_dirs[0], target)
    config = json.loads((target / "generation_config.json").read_text())
    (target / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [2, dot]}))
    eos_generator = SpeculativeGenerator.from_pretrained(target, model_dirs[1])
    expected = eos_generator.generate(PROMPTS[1], max_new_tokens=40)
    assert expected.stats.finish_reason == "stop" and expected.token_ids[-1] == dot
    with ServerThread(eos_generator, ServeConfig(port=0, served_model_name=MODEL)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        response = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=40, temperature=0)
        assert response.choices[0].finish_reason == "stop" and response.choices[0].text == expected.text
        assert response.usage.completion_tokens == len(expected.token_ids) < 40
        chunks = list(client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=40, temperature=0,
                                                stream=True))
        assert "".join(c.choices[0].text for c in chunks) == expected.text
        assert chunks[-1].choices[0].finish_reason == "stop"

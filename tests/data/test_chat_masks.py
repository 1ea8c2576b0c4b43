"""Acceptance 1 (chat): with the real tokenizers and their own chat templates, the trained tokens of each
assistant turn decode to exactly that message plus the end-of-turn marker; user / system text is never
trained."""

from __future__ import annotations

import pytest

from eaglespec.data.chat import ChatEncoder
from eaglespec.data.formats import Conversation, InvalidRecord
from paths import shared_path

SYSTEM = "You answer in short sentences, zebra-mode."
TURNS = [
    ("What is the capital of France? (q-alpha)", "The capital of France is Paris."),
    ("Write a Python function that adds two numbers. (q-beta)",
     "Here it is:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nCall add(1, 2) to get 3."),
    ("Merci ! Et en japonais ? 東京 (q-gamma)", "日本の首都は東京です。 Tokyo 🗼, with 14 million people."),
]


def _messages(with_system: bool) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}] if with_system else []
    for question, answer in TURNS:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


# (tokenizer folder, --chat-template file, template accepts a system message in multi-turn chats,
#  end-of-turn marker, what the template writes between the answer and the marker)
FAMILIES = [
    ("qwen2.5", None, True, "<|im_end|>", ""),
    ("llama3", None, True, "<|eot_id|>", ""),
    ("llama2", None, True, "</s>", " "),  # Llama-2's template writes ' ' + answer + ' ' + eos
    ("mistral-v0.3", None, False, "</s>", ""),
    ("mistral-v3-fim", None, False, "</s>", ""),
    ("starcoder", "templates/starcoder2-15b-instruct.hf.jinja", False, "<|endoftext|>", ""),
]


def _encoder(real_tokenizer, name: str, template: str | None) -> ChatEncoder:
    if template is None:
        return ChatEncoder(real_tokenizer(name))
    return ChatEncoder(real_tokenizer(name, fresh=True), shared_path("tokenizers", template).read_text())


@pytest.mark.parametrize("with_system", [False, True], ids=["no-system", "system"])
@pytest.mark.parametrize("name,template,system_ok,eot,gap", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_assistant_spans_decode_to_message_plus_end_of_turn(real_tokenizer, runs_of, name, template, system_ok,
                                                            eot, gap, with_system):
    if with_system and not system_ok:
        pytest.skip(f"the {name} template does not take a system message in multi-turn chats "
                    "(see test_templates_that_cannot_take_the_system_prompt)")
    encoder = _encoder(real_tokenizer, name, template)
    tokenizer = encoder.tokenizer
    ids, mask = encoder.encode(Conversation("c1", "test", _messages(with_system)))
    assert len(ids) == len(mask) and set(mask) <= {0, 1}
    assert ids == tokenizer(tokenizer.apply_chat_template(_messages(with_system), tokenize=False),
                            add_special_tokens=False)["input_ids"], "ids must be the one-pass tokenization"
    runs = runs_of(ids, mask)
    assert len(runs) == len(TURNS)
    for run, (_, answer) in zip(runs, TURNS):
        decoded = tokenizer.decode(run, skip_special_tokens=False)
        # SentencePiece decoding drops the leading space of the first piece; the template's own
        # leading space before the answer (Llama-2, Mistral) is therefore not compared.
        assert decoded.lstrip(" ") == answer + gap + eot, (name, decoded)
    trained_text = tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    for forbidden in ("q-alpha", "q-beta", "q-gamma", "zebra", "assistant", "[INST]", "### Instruction"):
        assert forbidden not in trained_text


def test_newline_after_qwen_end_of_turn_is_not_trained(real_tokenizer):
    tokenizer = real_tokenizer("qwen2.5")
    ids, mask = ChatEncoder(tokenizer).encode(Conversation("c", "t", _messages(False)))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, token in enumerate(ids[:-1]):
        if token == im_end and mask[i]:
            assert tokenizer.decode([ids[i + 1]]) == "\n" and mask[i + 1] == 0


def test_templates_that_cannot_take_the_system_prompt(real_tokenizer):
    conv = Conversation("sys1", "data.jsonl:7", _messages(True))
    # Mistral v3 moves the system prompt into the LAST user turn: earlier turns render differently once
    # later turns exist, so the turns cannot be aligned with what the model saw.
    with pytest.raises(InvalidRecord, match=r"data.jsonl:7: conversation 'sys1': the generation prompt before "
                                            r"message 2 is not a token prefix") as e:
        ChatEncoder(real_tokenizer("mistral-v3-fim")).encode(conv)
    assert e.value.reason == "template_not_incremental"
    # Mistral v0.3's template silently drops it in this situation: refused, not trained without it.
    with pytest.raises(InvalidRecord, match=r"dropped message 0 \(role 'system'\)"):
        ChatEncoder(real_tokenizer("mistral-v0.3")).encode(conv)
    tokenizer = real_tokenizer("starcoder", fresh=True)
    encoder = ChatEncoder(tokenizer, shared_path("tokenizers/templates/starcoder2-15b-instruct.hf.jinja").read_text())
    with pytest.raises(InvalidRecord, match="System messages are not allowed in this template"):
        encoder.encode(conv)


def test_single_turn_with_system_prompt_on_mistral(real_tokenizer, runs_of):
    tokenizer = real_tokenizer("mistral-v3-fim")
    messages = [{"role": "system", "content": SYSTEM}] + _messages(False)[:2]
    ids, mask = ChatEncoder(tokenizer).encode(Conversation("c", "t", messages))
    (run,) = runs_of(ids, mask)
    assert tokenizer.decode(run) == TURNS[0][1] + "</s>"


def test_tool_calls_with_a_tools_template(real_tokenizer, runs_of):
    tokenizer = real_tokenizer("qwen2.5")
    messages = [
        {"role": "user", "content": "Weather in Oslo? (q-tool)"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": '{"temp_c": -3, "sky": "snow-observation"}'},
        {"role": "assistant", "content": "It is -3 °C and snowing in Oslo."},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {}}}}]
    ids, mask = ChatEncoder(tokenizer).encode(Conversation("t", "t", messages, tools))
    call, answer = (tokenizer.decode(r) for r in runs_of(ids, mask))
    assert call == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
    assert answer == "It is -3 °C and snowing in Oslo.<|im_end|>"
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert "snow-observation" not in trained and "q-tool" not in trained and "Weather of a city" not in trained


def test_tool_messages_with_a_template_without_tools(real_tokenizer):
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "-3"},
        {"role": "assistant", "content": "It is -3 °C."},
    ]
    with pytest.raises(InvalidRecord, match=r"f.json\[3\]: the chat template rejected conversation 'x'.*"
                                            r"tool / function-call messages: does this template support them"):
        ChatEncoder(real_tokenizer("llama2")).encode(Conversation("x", "f.json[3]", messages))


def test_alternation_broken_reports_the_template_error_with_the_source(real_tokenizer):
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"}]
    with pytest.raises(InvalidRecord, match=r"chat.jsonl:12: the chat template rejected conversation 'k'.*"
                                            r"Conversation roles must alternate user/assistant") as e:
        ChatEncoder(real_tokenizer("llama2")).encode(Conversation("k", "chat.jsonl:12", messages))
    assert e.value.reason == "template_error"


def test_tokenizer_without_chat_template_suggests_the_flag(real_tokenizer):
    with pytest.raises(ValueError, match="has no chat template; pass one with --chat-template FILE"):
        ChatEncoder(real_tokenizer("starcoder", fresh=True), tokenizer_name="tokenizer starcoder")


GENERATION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.role == 'assistant' %}{% generation %}{{ message.content }}<|im_end|>{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}{{ message.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_template_assistant_masks_are_used_and_agree_with_incremental_rendering(real_tokenizer):
    conv = Conversation("g", "t", _messages(True))
    with_blocks = ChatEncoder(real_tokenizer("qwen2.5", fresh=True), GENERATION_TEMPLATE)
    assert with_blocks.uses_generation_blocks
    plain = ChatEncoder(real_tokenizer("qwen2.5", fresh=True),
                        GENERATION_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    assert not plain.uses_generation_blocks
    assert with_blocks.encode(conv) == plain.encode(conv)

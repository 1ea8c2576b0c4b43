"""Chat completions through a real chat template (Qwen2.5's, from shared/tokenizers) on a tiny random Qwen2 target:
multi-turn messages with a system prompt, the generation prompt appended, output equal to SpeculativeGenerator."""

from __future__ import annotations

import pytest
from paths import shared_path
from serving_helpers import MODEL

openai = pytest.importorskip("openai", reason="the serving tests use the official openai client (dev extra)")

MESSAGES = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Count to three."}]


@pytest.fixture(scope="module")
def qwen_generator(tmp_path_factory):
    import torch
    import transformers
    from transformers import AutoTokenizer

    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.models import TargetModel, build_draft

    tokenizer = AutoTokenizer.from_pretrained(str(shared_path("tokenizers", "qwen2.5")))
    if tokenizer.chat_template is None:
        pytest.skip("the shared qwen2.5 tokenizer has no chat template")
    config = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    root = tmp_path_factory.mktemp("qwen")
    model.save_pretrained(root / "target")
    tokenizer.save_pretrained(root / "target")
    draft = build_draft(TargetModel.from_pretrained(root / "target"), "eagle3", seed=0)
    draft.save_pretrained(root / "draft")
    return SpeculativeGenerator.from_pretrained(root / "target", root / "draft", kind="chain")  # fewer 151k-wide rows


def test_real_template_chat_equals_generate(qwen_generator):
    from eaglespec.serving import ServeConfig, ServerThread

    tokenizer = qwen_generator.tokenizer
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    expected = qwen_generator.generate(MESSAGES, max_new_tokens=12)
    with ServerThread(qwen_generator, ServeConfig(port=0, served_model_name=MODEL)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
        assert response.choices[0].message.content == expected.text
        assert response.usage.prompt_tokens == len(ids)
        assert response.eaglespec["token_ids"] == expected.token_ids
        parts = [{"type": "text", "text": "Count to "}, {"type": "text", "text": "three."}]
        split = MESSAGES[:-1] + [{"role": "user", "content": parts}]
        again = client.chat.completions.create(model=MODEL, messages=split, max_tokens=12, temperature=0)
        assert again.choices[0].message.content == expected.text  # text parts are joined into one content

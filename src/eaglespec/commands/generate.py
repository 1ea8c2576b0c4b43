"""`eaglespec generate --base MODEL --draft DRAFT (--prompt TEXT | --input FILE)`: speculative decoding."""

from __future__ import annotations

import argparse
import json
import sys

from eaglespec.commands.tree_flags import add_tree_flags, tree_overrides
from eaglespec.decoding.options import GenerationOptions

DEFAULTS = GenerationOptions()


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="target model directory (or 'stories260K')")
    p.add_argument("--draft", default=None, help="draft directory (eaglespec init-draft / train); needed unless --vanilla or --lookup")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--input", help='JSONL of prompts ({"prompt": ...} or {"turns": [...]}) or plain text lines')
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message (chat template)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
    p.add_argument("--top-k", type=int, default=DEFAULTS.top_k)
    add_tree_flags(p)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--stream", action="store_true", help="print tokens as they are accepted")
    p.add_argument("--show-accepted", action="store_true", help="colour tokens that came from the draft")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: the model's)")
    p.add_argument("--vanilla", action="store_true", help="plain target decoding (the baseline)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="with --input: decode up to B prompts together (continuous batching; same outputs)")


def read_prompts(args: argparse.Namespace) -> list:
    """Prompts as text (or chat messages with --chat); multi-turn entries use their first turn."""
    if args.prompt is not None:
        texts = [args.prompt]
    else:
        texts = []
        with open(args.input, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                texts.append(_prompt_of_line(line, args.input, number))
    return [[{"role": "user", "content": t}] if args.chat else t for t in texts]


def _prompt_of_line(line: str, path: str, number: int) -> str:
    if not line.lstrip().startswith("{"):
        return line.rstrip("\n")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: invalid JSON: {e}") from e
    if "prompt" in record:
        return str(record["prompt"])
    if record.get("turns"):
        return str(record["turns"][0])
    raise ValueError(f"{path}:{number}: expected a 'prompt' or 'turns' field, got keys {sorted(record)}")


def run(args: argparse.Namespace) -> int:
    from eaglespec.decoding import GenerationStats, SpeculativeGenerator

    if args.draft is None and not args.vanilla and not args.lookup:
        raise ValueError("--draft is required (or pass --vanilla for plain decoding, or --lookup N for n-gram "
                         "lookup decoding without a draft)")
    options = options_of(args)
    gen = SpeculativeGenerator.from_pretrained(args.base, None if args.vanilla else args.draft,
                                               dtype=args.dtype, device=args.device, **tree_overrides(args))
    if args.batch_size > 1:
        return _run_batched(gen, read_prompts(args), args, options)
    for prompt in read_prompts(args):
        stats = GenerationStats()
        chunks = []
        for chunk in gen.stream(prompt, options=options, vanilla=args.vanilla, stats=stats):
            chunks.append(chunk)
            if args.stream and not args.json:
                _print_chunk(gen, chunks, args.show_accepted)
        if args.json:
            print(json.dumps({"token_ids": [t for c in chunks for t in c.token_ids],
                              "text": "".join(c.text for c in chunks), "new_tokens": stats.new_tokens,
                              "target_forwards": stats.target_forwards, "tau": stats.tau,
                              "stats": stats.to_dict()}))
            continue
        if not args.stream:
            for i in range(len(chunks)):
                _print_chunk(gen, chunks[: i + 1], args.show_accepted)
        print(f"\n[{stats.new_tokens} tokens, {stats.target_forwards} target forwards, tau {stats.tau:.2f}, "
              f"finish: {stats.finish_reason}]")
    return 0


def options_of(args: argparse.Namespace) -> GenerationOptions:
    """The generation flags, checked once."""
    return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                             top_k=args.top_k, seed=args.seed)


def _print_chunk(gen, chunks: list, colour: bool) -> None:
    """Write the last chunk's text; with colour, draft-accepted tokens are green."""
    from eaglespec.decoding.text import highlight, token_pieces

    chunk = chunks[-1]
    if not colour or gen.tokenizer is None:
        sys.stdout.write(chunk.text)
    else:
        shown = [t for c in chunks[:-1] for t in c.token_ids]
        sys.stdout.write(highlight(token_pieces(gen.tokenizer, chunk.token_ids, shown), chunk.from_draft))
    sys.stdout.flush()


def _run_batched(gen, prompts: list, args: argparse.Namespace, options: GenerationOptions) -> int:
    """--batch-size B: every prompt through one continuous batch; outputs in input order, then throughput."""
    if args.stream:
        raise ValueError("--stream prints one prompt at a time; it does not combine with --batch-size")
    seed = None if options.seed is None else [options.seed] * len(prompts)  # each prompt as if decoded alone
    result = gen.generate_batch(prompts, options=options, vanilla=args.vanilla, max_batch_size=args.batch_size,
                                seed=seed)
    failed = 0
    for out in result.outputs:
        failed += out.error is not None
        if args.json:
            print(json.dumps({"token_ids": out.token_ids, "text": out.text, "new_tokens": out.stats.new_tokens,
                              "target_forwards": out.stats.target_forwards, "tau": out.stats.tau,
                              "error": out.error, "stats": out.stats.to_dict()}))
        else:
            print(f"error: {out.error}" if out.error else out.text)
            print(f"[{out.stats.new_tokens} tokens, tau {out.stats.tau:.2f}, finish: {out.stats.finish_reason}]")
    print(f"[batch {args.batch_size}: {result.new_tokens} new tokens in {result.wall_time:.2f} s = "
          f"{result.tokens_per_second:.1f} tokens/s, {result.batch_forwards} target forwards]", file=sys.stderr)
    return 1 if failed else 0

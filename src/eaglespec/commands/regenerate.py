"""`eaglespec regenerate`: replace a dataset's answers with the target's own output (self-distillation),
sample unconditional texts from BOS with `--from-bos N`, or have a chat model write N conversations itself with
`--sample-chats N` (a user turn sampled from its chat template, then its answer). Resumable: rerun the same command."""

from __future__ import annotations

import argparse

DEFAULT_MAX_NEW_TOKENS = 256
BOS_DEFAULT_TEMPERATURE = 1.0  # unconditional samples must differ from each other: greedy would repeat one text
PROMPT_DEFAULT_MAX_TOKENS = 128  # a sampled user turn; longer ones are cut there (and still answered)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="target model directory (or 'stories260K' for the bundled one)")
    p.add_argument("--output", required=True, help="output JSON Lines file (appended to; a rerun resumes)")
    p.add_argument("--input", help="input JSON / JSON Lines file (optionally .gz)")
    p.add_argument("--data-format", choices=("chat", "fim", "text"),
                   help="chat: assistant turns; fim: middles; text: completions of {prompt, completion}")
    p.add_argument("--from-bos", type=int, metavar="N", default=None,
                   help="instead of --input: sample N unconditional texts starting at BOS")
    p.add_argument("--sample-chats", type=int, metavar="N", default=None,
                   help="instead of --input: the chat model writes N one-turn chats, each a user turn sampled from its "
                        "own chat template (--prompt-temperature) and its answer (--temperature)")
    p.add_argument("--prompt-temperature", type=float, default=BOS_DEFAULT_TEMPERATURE,
                   help=f"--sample-chats: temperature of the user turns (default {BOS_DEFAULT_TEMPERATURE})")
    p.add_argument("--prompt-max-tokens", type=int, default=PROMPT_DEFAULT_MAX_TOKENS,
                   help=f"--sample-chats: longest user turn in tokens (default {PROMPT_DEFAULT_MAX_TOKENS})")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"per generation (default {DEFAULT_MAX_NEW_TOKENS}, bounded by the model's context)")
    p.add_argument("--min-new-tokens", type=int, default=0, help="suppress EOS before this many new tokens")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"0 = greedy (default with --input); default {BOS_DEFAULT_TEMPERATURE} with --from-bos")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8, help="records generated together")
    p.add_argument("--continuous-batching", action="store_true",
                   help="refill a batch row as soon as its answer ends (decoding.batch) instead of lockstep "
                        "model.generate batches; pays for large models with answers of very different lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    p.add_argument("--chat-template", help="Jinja chat template file, for tokenizers without one")
    p.add_argument("--fim-order", default=None, choices=("psm", "spm"),
                   help="fim: layout (default: the FIM family's own, as in `prepare`)")
    p.add_argument("--fim-tokens", default=None, metavar="P,S,M[,T]",
                   help="fim: prefix, suffix, middle (and terminator) tokens overriding auto-detection")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")


def _check_args(args: argparse.Namespace) -> None:
    sources = [flag for flag, value in (("--input", args.input), ("--from-bos", args.from_bos),
                                        ("--sample-chats", args.sample_chats)) if value is not None]
    if not sources or (args.input is not None and args.data_format is None):
        raise ValueError("give --input FILE and --data-format chat|fim|text, or --from-bos N, or --sample-chats N")
    if len(sources) > 1:
        raise ValueError(f"{' and '.join(sources)}: give one of them (--from-bos and --sample-chats need no input)")
    if args.sample_chats is not None and args.data_format not in (None, "chat"):
        raise ValueError(f"--sample-chats writes chat records; --data-format {args.data_format} does not apply")
    if args.sample_chats is not None and args.prompt_temperature <= 0:
        raise ValueError(f"--prompt-temperature {args.prompt_temperature:g} would write the same user turn "
                         f"{args.sample_chats} times; sampled chats need a temperature > 0 (default {BOS_DEFAULT_TEMPERATURE})")


def _load(args: argparse.Namespace):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eaglespec.models import resolve_model_path
    from eaglespec.data.chat import load_chat_template

    model_path = resolve_model_path(args.model)
    dtype = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.tokenizer or args.model))
    if args.chat_template:
        tokenizer.chat_template = load_chat_template(args.chat_template)
    return model, tokenizer


def _jobs(args: argparse.Namespace, generator, settings) -> tuple[list, str]:
    """The jobs of this run and the format `prepare` will read their records in."""
    import dataclasses

    from eaglespec.data import regenerate as rg

    if args.from_bos is not None:
        return rg.bos_jobs(args.from_bos, generator), "text"
    if args.sample_chats is not None:
        prompt_settings = dataclasses.replace(settings, temperature=args.prompt_temperature,
                                              max_new_tokens=args.prompt_max_tokens, min_new_tokens=0)
        return rg.sampled_chat_jobs(args.sample_chats, generator, prompt_settings), "chat"
    return rg.build_jobs(args.input, args.data_format, generator, args.fim_tokens, args.fim_order), args.data_format


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from eaglespec.data import regenerate as rg

    _check_args(args)
    temperature = args.temperature
    if temperature is None:
        temperature = BOS_DEFAULT_TEMPERATURE if args.from_bos is not None else 0.0
    settings = rg.SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=temperature, top_p=args.top_p,
                                   min_new_tokens=args.min_new_tokens, seed=args.seed,
                                   continuous=args.continuous_batching)
    model, tokenizer = _load(args)
    generator = rg.Generator(model, tokenizer, settings)
    jobs, data_format = _jobs(args, generator, settings)
    plan = rg.plan_regeneration(jobs, args.output, data_format)
    if plan.already_done:
        print(f"resuming {args.output}: {plan.already_done} of {plan.total} records already done")
    with tqdm(total=len(plan.todo), unit="rec", desc="regenerate") as bar:
        summary = rg.run_plan(plan, generator, args.batch_size, progress=bar.update)
    limit = f"--max-new-tokens={args.max_new_tokens}"
    if args.sample_chats is not None:
        limit = f"their limit (user turns --prompt-max-tokens={args.prompt_max_tokens}, answers {limit})"
    print(f"wrote {summary.generated} records to {args.output} ({summary.total} in all)"
          + (f"; {summary.hit_max_new_tokens} generations stopped at {limit}" if summary.hit_max_new_tokens else ""))
    if summary.skipped:
        print(f"not written: {sum(summary.skipped.values())} records that `prepare` would reject "
              f"({', '.join(f'{n} {r}' for r, n in summary.skipped.items())}); a rerun tries them again")
    return 0

"""`eaglespec regenerate`: replace a dataset's answers with the target's own output (self-distillation),
sample unconditional texts from BOS with `--from-bos N`, or have a chat model write N conversations itself with
`--sample-chats N` (a user turn sampled from its chat template, then its answer). The local target decodes in one
continuous batch; `--server URL` sends the same requests to an OpenAI-compatible server instead. Resumable: rerun
the same command."""

from __future__ import annotations

import argparse

DEFAULT_MAX_NEW_TOKENS = 256
BOS_DEFAULT_TEMPERATURE = 1.0  # unconditional samples must differ from each other: greedy would repeat one text
PROMPT_DEFAULT_MAX_TOKENS = 128  # a sampled user turn; longer ones are cut there (and still answered)
DEFAULT_CONCURRENCY = 8  # --server: requests in flight
DTYPES = {"auto": None, "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}


def configure_parser(p: argparse.ArgumentParser) -> None:
    from eaglespec.distill import DEFAULT_BATCH_SIZE

    p.add_argument("--model", required=True, help="target model directory (or 'stories260K' for the bundled one); "
                                                   "with --server only its tokenizer is read")
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
    p.add_argument("--temperature", type=float, default=None,
                   help=f"0 = greedy (default with --input); default {BOS_DEFAULT_TEMPERATURE} with --from-bos")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="prompts the local target decodes together (a finished one is replaced at once)")
    p.add_argument("--seed", type=int, default=0, help="with the record id and turn, each prompt's own seed")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    p.add_argument("--chat-template", help="Jinja chat template file, for tokenizers without one")
    p.add_argument("--fim-order", default=None, choices=("psm", "spm"),
                   help="fim: layout (default: the FIM family's own, as in `prepare`)")
    p.add_argument("--fim-tokens", default=None, metavar="P,S,M[,T]",
                   help="fim: prefix, suffix, middle (and terminator) tokens overriding auto-detection")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="auto", help="the target's dtype (auto: the checkpoint's)")
    _server_flags(p)


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL", default=None,
                   help="send the requests to this OpenAI-compatible server (vLLM, SGLang, llama-server, eaglespec "
                        "serve) instead of running the target; each record gets a generated_by field")
    p.add_argument("--server-model", default=None, help="--server: the model to ask for (default: its first)")
    p.add_argument("--server-api", choices=("completions", "chat"), default="completions",
                   help="--server: completions sends token-id prompts rendered here (default); chat sends chat turns "
                        "as messages to /v1/chat/completions (the server's template)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"--server: requests in flight (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--api-key", default=None, help="--server: bearer token, if the server wants one")


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
    if args.server is not None and args.data_format == "fim":
        raise ValueError("--server with --data-format fim: a FIM middle ends at the terminator token, which an "
                         "OpenAI server does not stop at; regenerate FIM records without --server")


def _options(args: argparse.Namespace):
    from eaglespec.decoding import GenerationOptions

    temperature = args.temperature
    if temperature is None:
        temperature = BOS_DEFAULT_TEMPERATURE if args.from_bos is not None else 0.0
    return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=temperature, top_p=args.top_p,
                             seed=args.seed)


def _tokenizer(args: argparse.Namespace):
    from transformers import AutoTokenizer

    from eaglespec.data.chat import load_chat_template
    from eaglespec.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.tokenizer or args.model))
    if args.chat_template:
        tokenizer.chat_template = load_chat_template(args.chat_template)
    return tokenizer


def _jobs(args: argparse.Namespace, tokenizer, options):
    """The jobs of this run (and the format `prepare` will read their records in)."""
    import dataclasses

    from eaglespec import distill

    if args.from_bos is not None:
        return distill.bos_jobs(args.from_bos, tokenizer)
    if args.sample_chats is not None:
        user_options = dataclasses.replace(options, temperature=args.prompt_temperature,
                                           max_new_tokens=args.prompt_max_tokens)
        return distill.sampled_chat_jobs(args.sample_chats, tokenizer, user_options)
    return distill.file_jobs(args.input, args.data_format, tokenizer, args.fim_tokens, args.fim_order)


def _engine(args: argparse.Namespace, tokenizer, options, jobs):
    """The local target's continuous batch, or the server."""
    import torch

    from eaglespec import distill
    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.models import TargetModel, resolve_model_path

    if args.server is not None:
        config = distill.ServerConfig(args.server, args.server_model, args.server_api, args.concurrency, args.api_key)
        return distill.ServerEngine(config, options)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = TargetModel.from_pretrained(resolve_model_path(args.model), dtype=DTYPES[args.dtype], device=device)
    return distill.LocalEngine(SpeculativeGenerator(target, None, tokenizer), options, args.batch_size,
                               jobs.stop_token_ids)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from eaglespec import distill

    _check_args(args)
    options = _options(args)
    tokenizer = _tokenizer(args)
    jobs = _jobs(args, tokenizer, options)
    plan = distill.plan_regeneration(jobs, args.output)
    if plan.already_done:
        print(f"resuming {args.output}: {plan.already_done} of {plan.total} records already done")
    engine = _engine(args, tokenizer, options, jobs)
    try:
        with tqdm(total=len(plan.todo), unit="rec", desc="regenerate") as bar:
            summary = distill.run_plan(plan, engine, progress=bar.update)
    finally:
        engine.close()
    _report(args, summary)
    return 0


def _report(args: argparse.Namespace, summary) -> None:
    limit = f"--max-new-tokens={args.max_new_tokens}"
    if args.sample_chats is not None:
        limit = f"their limit (user turns --prompt-max-tokens={args.prompt_max_tokens}, answers {limit})"
    print(f"wrote {summary.generated} records to {args.output} ({summary.total} in all)"
          + (f"; {summary.hit_max_new_tokens} generations stopped at {limit}" if summary.hit_max_new_tokens else ""))
    if summary.skipped:
        print(f"not written: {sum(summary.skipped.values())} records that `prepare` would reject "
              f"({', '.join(f'{n} {r}' for r, n in summary.skipped.items())}); a rerun tries them again")

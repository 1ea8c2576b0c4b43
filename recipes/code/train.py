"""Train a small FIM code model on this interpreter's standard library (issue 37): tokenizer, model, card.

    nice -n 19 python recipes/code/train.py --output ~/.cache/eaglespec/models/stdlib-fim-10m --threads 1 \
        2>&1 | tee stdlib-fim-10m.log

Rerun the same command after an interruption and it resumes from the last checkpoint (same lr schedule).
A finished model is not overwritten without --overwrite. Every flag's default is in codefim/config.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # codefim, beside this script

from codefim.config import ModelShape, RecipeConfig  # noqa: E402
from codefim.run import run_recipe  # noqa: E402

RENAMED = {"time_budget_min": "--time-budget"}  # minutes, the flag name the issue uses
HELP = {"time_budget_min": "minutes of CPU time to train (the process's, all threads)",
        "source": "standard-library folder; '' = this interpreter's", "threads": "torch threads; 0 = torch's default",
        "max_steps": "steps; the schedule ends at this or the time budget, whichever comes first"}


def _flag(name: str) -> str:
    return RENAMED.get(name, "--" + name.replace("_", "-"))


def _add_fields(parser: argparse.ArgumentParser, fields: tuple[dataclasses.Field, ...], skip: set[str]) -> None:
    for f in fields:
        if f.name not in skip:
            parser.add_argument(_flag(f.name), dest=f.name, type=type(f.default), default=f.default,
                                help=f"{HELP.get(f.name, '')} (default {f.default!r})".lstrip())


def parse_args(argv: list[str] | None = None) -> tuple[RecipeConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="model folder (also holds the resumable state)")
    parser.add_argument("--overwrite", action="store_true", help="train anew over a finished model")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar (log files)")
    _add_fields(parser, dataclasses.fields(RecipeConfig), {"output", "shape"})
    _add_fields(parser, dataclasses.fields(ModelShape), set())
    args = parser.parse_args(argv)
    values = vars(args)
    shape = ModelShape(**{f.name: values[f.name] for f in dataclasses.fields(ModelShape)})
    config = RecipeConfig(shape=shape, **{f.name: values[f.name] for f in dataclasses.fields(RecipeConfig)
                                          if f.name != "shape"})
    return config, args


def _stop_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt  # the training loop saves a checkpoint on the way out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config, args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    summary = run_recipe(config, overwrite=args.overwrite, show_progress=not args.no_progress)
    print(f"{config.output}: {summary['steps']} steps, train loss {summary['final_train_loss']}, "
          f"held-out {summary['final_heldout_loss']}, {summary['train_minutes']} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

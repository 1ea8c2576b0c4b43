"""FIM records for the code model's draft (issue 37): {"id", "prefix", "middle", "suffix"} cut from the HELD-IN
standard-library files (the model's training side of the split; the held-out files stay unseen), for
`eaglespec regenerate --data-format fim`, which re-answers each middle with the model itself.

    python recipes/code/fim_samples.py --model stdlib-fim-10m --count 4000 --output runs/code/fim-samples.jsonl

`--split heldout` cuts them from the held-out files instead (ids `heldout-NNNNN`): infilling prompts that neither
the model nor its drafts were trained on (`infill_llamacpp.py` serves them through llama-server's /infill).

Each record is one chunk of a file (cut at line starts to fit the model's context, as the recipe's training
samples are) with a middle of 1 to --max-lines whole lines at a random place: what an editor asks for (complete
this line, this block), and the shape of HumanEval's single- and multi-line infilling sets. Seeded.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # codefim, beside this script

from codefim.config import RecipeConfig  # noqa: E402
from codefim.corpus import load_corpus, stdlib_root  # noqa: E402
from codefim.samples import chunk_corpus  # noqa: E402

MAX_MIDDLE_LINES = 8
SPLITS = {"train": "stdlib", "heldout": "heldout"}  # the split -> its records' id prefix


def line_middle(chunk: str, rng: random.Random, max_lines: int) -> tuple[str, str, str] | None:
    """(prefix, middle, suffix) with a middle of 1..max_lines whole lines, starting at a non-blank line after the
    first (an editor always has some code before the cursor; None: no such line)."""
    lines = chunk.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() and i > 0]
    if not starts:
        return None
    first = rng.choice(starts)
    last = min(len(lines), first + rng.randint(1, max_lines))
    return "".join(lines[:first]), "".join(lines[first:last]), "".join(lines[last:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="the recipe's model folder or name, e.g. stdlib-fim-10m (its recipe.json gives the split)")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--count", type=int, default=4000)
    p.add_argument("--max-lines", type=int, default=MAX_MIDDLE_LINES, help="longest middle, in lines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=SPLITS, default="train",
                   help="train: the held-in files (draft data); heldout: the files no training saw (evaluation)")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from eaglespec.models import resolve_model_path

    model_dir = Path(resolve_model_path(args.model))
    recipe = RecipeConfig.from_json(model_dir / "recipe.json")  # the model's own split, seed and context
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    corpus = load_corpus(Path(recipe.source) if recipe.source else stdlib_root(), recipe.seed, recipe.heldout_fraction)
    files = corpus.train if args.split == "train" else corpus.heldout
    chunks = chunk_corpus(tokenizer, files, recipe.seq_len)
    rng = random.Random(args.seed)
    rng.shuffle(chunks)
    written = 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as out:
        for chunk in chunks:
            cut = line_middle(chunk, rng, args.max_lines)
            if cut is None:
                continue
            prefix, middle, suffix = cut
            out.write(json.dumps({"id": f"{SPLITS[args.split]}-{written:05d}", "prefix": prefix, "middle": middle,
                                  "suffix": suffix}) + "\n")
            written += 1
            if written == args.count:
                break
    print(f"wrote {written} FIM records from {len(files)} {args.split} files ({len(chunks)} chunks) to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

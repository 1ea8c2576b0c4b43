"""The model card: greedy middles for held-out standard-library functions, the loss curve, README.md."""

from __future__ import annotations

import ast
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from codefim.corpus import SourceFile
from eaglespec.data.fim import FimTokens, fim_prompt_ids

FUNCTION_LINES = (4, 30)  # functions this long make readable examples that fit the context
MAX_MIDDLE_TOKENS = 64  # greedy budget for one middle (a line or two of code)


@dataclass(frozen=True)
class InfillExample:
    where: str  # "json/decoder.py:JSONObject"
    prefix: str
    middle: str  # the real line
    suffix: str


def _functions(source: SourceFile) -> list[ast.FunctionDef]:
    try:
        tree = ast.parse(source.text)
    except SyntaxError:  # lib2to3 grammar tests and similar hold Python 2 code
        return []
    low, high = FUNCTION_LINES
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
            and low <= n.end_lineno - n.lineno + 1 <= high and len(n.body) >= 2]


def _example(source: SourceFile, function: ast.FunctionDef, rng: random.Random) -> InfillExample | None:
    """One body line of `function` as the middle (its text up to the newline), the function around it."""
    lines = source.text.splitlines(keepends=True)
    first, last = function.lineno - 1, function.end_lineno
    code = function.body[1:] if ast.get_docstring(function) is not None else function.body
    body = [i for i in range(code[0].lineno - 1, last)
            if lines[i].strip() and not lines[i].lstrip().startswith("#")]
    if not body:
        return None
    cut = rng.choice(body)
    indent = len(lines[cut]) - len(lines[cut].lstrip())
    prefix = "".join(lines[first:cut]) + lines[cut][:indent]
    return InfillExample(f"{source.relative_path}:{function.name}", prefix, lines[cut][indent:].rstrip("\n"),
                         "\n" + "".join(lines[cut + 1:last]))


def _fits(tokenizer: Any, example: InfillExample, max_tokens: int) -> bool:
    """Prompt, real middle and the 4 FIM / end tokens within the trained context."""
    texts = [example.prefix, example.middle, example.suffix]
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 4 <= max_tokens


def heldout_examples(files: Sequence[SourceFile], count: int, seed: int, tokenizer: Any,
                     max_tokens: int) -> list[InfillExample]:
    """`count` functions from different held-out files, drawn with `seed`, each fitting `max_tokens`."""
    rng = random.Random(f"{seed}:card")
    shuffled = list(files)
    rng.shuffle(shuffled)
    examples = []
    for source in shuffled:
        functions = _functions(source)
        example = _example(source, rng.choice(functions), rng) if functions else None
        if example is not None and _fits(tokenizer, example, max_tokens):
            examples.append(example)
        if len(examples) == count:
            break
    return examples


@torch.no_grad()
def greedy_middle(model: Any, tokenizer: Any, example: InfillExample, fim: FimTokens) -> str:
    """The model's greedy middle in PSM layout, up to EOS or MAX_MIDDLE_TOKENS."""
    ids = fim_prompt_ids(tokenizer, example.prefix, example.suffix, fim)
    output = model.generate(torch.tensor([ids]), max_new_tokens=MAX_MIDDLE_TOKENS, do_sample=False,
                            eos_token_id=fim.terminator_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)


def plot_losses(losses: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    if losses:
        axes.plot(*zip(*losses), label="train (mean of 10 steps)", linewidth=1)
    if evals:
        axes.plot(*zip(*evals), "o-", label="held-out files", markersize=3)
    axes.set(xlabel="step", ylabel="cross-entropy (nats / token)", title="FIM code model")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _fence(text: str) -> str:
    return "```python\n" + text.replace("```", "`\u200b``") + "\n```"


def examples_markdown(examples: Sequence[InfillExample], middles: Sequence[str]) -> str:
    """Each example: where, prefix tail, suffix head, the real middle and the model's, exact or not."""
    parts = []
    for example, middle in zip(examples, middles):
        exact = "exact" if middle.strip() == example.middle.strip() else "differs"
        parts.append(f"### `{example.where}` ({exact})\n\nprefix (end):\n{_fence(example.prefix[-400:])}\n"
                     f"suffix (start):\n{_fence(example.suffix[:300])}\n"
                     f"real middle:\n{_fence(example.middle)}\nmodel's greedy middle:\n{_fence(middle)}\n")
    return "\n".join(parts)

"""Show one sample with its trained tokens highlighted (the tutorial's visualize_loss_mask).

Colour: trained tokens on a green background, the rest dim. Plain text (no terminal colours): trained
spans are wrapped in [[ ]] so the exact boundaries survive copy and paste.
"""

from __future__ import annotations

from typing import Any

TRAINED_ANSI = "\x1b[30;42m"  # black on green
CONTEXT_ANSI = "\x1b[2m"  # dim
RESET_ANSI = "\x1b[0m"
OPEN_MARK, CLOSE_MARK = "[[", "]]"


def mask_runs(input_ids: list[int], loss_mask: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens of equal mask value: [(trained, ids)], in order."""
    if len(input_ids) != len(loss_mask):
        raise ValueError(f"input_ids has {len(input_ids)} tokens but loss_mask has {len(loss_mask)}")
    runs: list[tuple[bool, list[int]]] = []
    for token, trained in zip(input_ids, loss_mask):
        if runs and runs[-1][0] == bool(trained):
            runs[-1][1].append(int(token))
        else:
            runs.append((bool(trained), [int(token)]))
    return runs


def format_sample(tokenizer: Any, input_ids: list[int], loss_mask: list[int], color: bool = True) -> str:
    """The decoded sample with trained spans highlighted (ANSI) or bracketed (plain). Each run is decoded
    as a whole so multi-byte characters split over tokens stay intact."""
    parts = []
    for trained, ids in mask_runs(input_ids, loss_mask):
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if color:
            parts.append(f"{TRAINED_ANSI if trained else CONTEXT_ANSI}{text}{RESET_ANSI}")
        else:
            parts.append(f"{OPEN_MARK}{text}{CLOSE_MARK}" if trained else text)
    return "".join(parts)


def sample_summary(input_ids: list[int], loss_mask: list[int]) -> str:
    trained = sum(int(m) for m in loss_mask)
    spans = sum(1 for trained_run, _ in mask_runs(input_ids, loss_mask) if trained_run)
    return f"{len(input_ids)} tokens, {trained} trained in {spans} span(s)"

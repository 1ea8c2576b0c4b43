"""Token-level text rendering: each token's piece of the decoded text, and draft-accepted tokens in colour.

Shared by the commands that print decoded text, the server's streamed deltas and evaluation's reports.
"""

from __future__ import annotations

from collections.abc import Sequence

GREEN, RESET = "\033[32m", "\033[0m"


def token_pieces(tokenizer, token_ids: Sequence[int], prefix_ids: Sequence[int] = ()) -> list[str]:
    """The text each token adds to the decoded output, after `prefix_ids` (already shown).

    A piece is the growth of the decoded text, so tokenizers that merge pieces (SentencePiece leading
    spaces, multi-byte characters) keep their spacing; concatenated pieces equal the decoded whole.
    """
    ids = list(prefix_ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    pieces = []
    for token in token_ids:
        ids.append(int(token))
        grown = tokenizer.decode(ids, skip_special_tokens=True)
        pieces.append(grown[len(text):])
        text = grown
    return pieces


def highlight(pieces: Sequence[str], from_draft: Sequence[bool], colour: bool = True) -> str:
    """Join pieces, wrapping draft-accepted ones in green (ANSI) or, without colour, in [brackets]."""
    if colour:
        return "".join(f"{GREEN}{p}{RESET}" if d else p for p, d in zip(pieces, from_draft))
    out, inside = [], False
    for p, d in zip(pieces, from_draft):
        if d != inside:
            out.append("[" if d else "]")
            inside = d
        out.append(p)
    return "".join(out) + ("]" if inside else "")

"""The token-level rendering of draft-accepted text (moved from tests/evaluation/test_compare.py with its module)."""

from eaglespec.decoding.text import highlight, token_pieces
from fixtures import stories260k_tokenizer


def test_token_pieces_join_to_the_decoded_text():
    tok = stories260k_tokenizer()
    prefix = tok("Once upon a time").input_ids
    new = tok(", there was a little girl named Lily.", add_special_tokens=False).input_ids
    pieces = token_pieces(tok, new, prefix)
    assert len(pieces) == len(new)
    assert "".join(pieces) == tok.decode(prefix + new, skip_special_tokens=True)[len("Once upon a time"):]
    assert " there" in pieces and " named" in pieces  # SentencePiece spaces survive piecewise rendering


def test_highlight_colour_and_brackets():
    pieces, flags = ["a", "b", "c", "d"], [False, True, True, False]
    assert highlight(pieces, flags, colour=False) == "a[bc]d"
    assert highlight(pieces, [True, False, False, True], colour=False) == "[a]bc[d]"
    coloured = highlight(pieces, flags, colour=True)
    assert coloured == "a\033[32mb\033[0m\033[32mc\033[0md"

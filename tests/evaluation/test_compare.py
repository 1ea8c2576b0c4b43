"""Side-by-side comparison with vanilla decoding, and the token-level rendering of draft-accepted text."""


from eaglespec.decoding import SpeculativeGenerator
from eaglespec.evaluation import compare_with_vanilla, highlight, token_pieces
from eaglespec.models import TargetModel, build_draft
from fixtures import stories260k, stories260k_tokenizer


def test_compare_with_vanilla_on_stories260k():
    target = TargetModel(stories260k())
    gen = SpeculativeGenerator(target, build_draft(target, "eagle3", seed=0), stories260k_tokenizer())
    prompts = ["Once upon a time", "Lily saw a dog"]
    report = compare_with_vanilla(gen, prompts, max_new_tokens=12)
    assert [r.prompt for r in report.results] == prompts
    assert report.all_identical
    forwards = sum(r.speculative.stats.target_forwards for r in report.results)
    assert report.new_tokens == 24
    assert report.tau == 24 / forwards
    assert report.speedup == report.speculative_tokens_per_s / report.vanilla_tokens_per_s
    d = report.to_dict()
    assert d["identical_to_vanilla"] is True and len(d["per_prompt_tau"]) == 2


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

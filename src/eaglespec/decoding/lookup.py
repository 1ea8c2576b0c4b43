"""N-gram lookup: a continuation copied from the sequence's own earlier tokens, verified with the draft tree.

Answers repeat their prompts (names, code, lists to extract) and themselves (a small model in greedy decoding
often loops), and a one-layer draft predicts a few tokens ahead at best. So at each step the longest suffix of
the sequence (prompt, answer so far and the root; LOOKUP_MAX_NGRAM down to LOOKUP_MIN_NGRAM tokens) is looked
up at its most recent earlier occurrence, and the tokens that followed it there become a chain under the root.
`tree.with_chain` merges that chain into the draft's tree, sharing the nodes where the draft proposed the same
tokens, so one target forward verifies both (prompt lookup decoding and EAGLE in one tree).

Verification is unchanged and so is the output: greedy accepts a node only if it is the target's argmax, and
lossless sampling treats every child as a deterministic candidate (see `verify`), which the chain's tokens
are; merging keeps siblings distinct, as that needs.
"""

from __future__ import annotations

DEFAULT_LOOKUP_TOKENS = 8  # chain length where none is configured (bench's `lookup` method); tune picks its own
LOOKUP_MAX_NGRAM = 4
LOOKUP_MIN_NGRAM = 2  # a single repeated token ("the", a space) matches too often to be worth verifying


class NgramIndex:
    """The tokens of one sequence and, for every n-gram of LOOKUP_MIN_NGRAM..LOOKUP_MAX_NGRAM tokens, where it
    last ended. Appending is O(tokens); a lookup costs one dictionary probe per n-gram size."""

    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self._last_end: dict[tuple[int, ...], int] = {}  # n-gram -> index of its last token, latest occurrence
        self._indexed = 0  # n-grams ending before this index are in _last_end
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)

    def continuation(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest matching suffix
        ([] when no suffix of at least LOOKUP_MIN_NGRAM tokens occurred before)."""
        n_tokens = len(self.tokens)
        self._index_until(n_tokens - 1)  # every occurrence but the suffix itself
        for n in range(min(LOOKUP_MAX_NGRAM, n_tokens), LOOKUP_MIN_NGRAM - 1, -1):
            end = self._last_end.get(tuple(self.tokens[n_tokens - n:]))
            if end is not None:
                return self.tokens[end + 1: end + 1 + limit]
        return []

    def _index_until(self, stop: int) -> None:
        tokens = self.tokens
        for end in range(self._indexed, stop):
            for n in range(LOOKUP_MIN_NGRAM, min(LOOKUP_MAX_NGRAM, end + 1) + 1):
                self._last_end[tuple(tokens[end - n + 1: end + 1])] = end
        self._indexed = max(self._indexed, stop)

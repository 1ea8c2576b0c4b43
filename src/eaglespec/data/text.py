"""Plain-text samples for base models (such as the bundled stories260K).

{"text"}: tokenized as the tokenizer does by default (with BOS when it adds one); every token is trained
except BOS, which is never predicted. No EOS is appended: a text is taken as it is.
{"prompt", "completion"}: prompt + completion is tokenized as one string (what the model sees), the tokens
past the prompt's token prefix are trained, and EOS is appended and trained so drafts learn to stop.
"""

from __future__ import annotations

from typing import Any

from eaglespec.data.chat import common_prefix_length
from eaglespec.data.formats import TextExample


def encode_text(tokenizer: Any, example: TextExample) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask), both [T]."""
    bos = tokenizer.bos_token_id
    if example.prompt is None:
        ids = tokenizer(example.completion)["input_ids"]
        return ids, [0 if t == bos else 1 for t in ids]
    ids = tokenizer(example.prompt + example.completion)["input_ids"]
    # A token that straddles the prompt/completion boundary holds completion text: it is trained.
    start = common_prefix_length(tokenizer(example.prompt)["input_ids"], ids)
    eos = tokenizer.eos_token_id
    if eos is not None and ids[-1:] != [eos]:  # some tokenizers append EOS themselves
        ids = ids + [eos]
    return ids, [0] * start + [1] * (len(ids) - start)

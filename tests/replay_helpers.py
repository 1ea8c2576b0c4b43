"""What `tune`'s replays are checked against: the steps real decoding took over the stretch a replay walks."""

from __future__ import annotations


def decoded_steps_within(accept_lengths: list[int], walked: int) -> list[int]:
    """Tokens per step (accepted + the bonus token) of the decoded steps whose root lies in the first `walked`
    positions of the continuation."""
    steps, position = [], 0
    for accepted in accept_lengths:
        if position >= walked:
            break
        steps.append(accepted + 1)
        position += accepted + 1
    return steps

"""Verification: which draft nodes the target accepts, and the target's own next ("bonus") token.

Greedy: the longest root-to-node path whose every token equals the target argmax at its parent.
Sampling (lossless): walk down from the root. At node u the target distribution p = processed(logits[u]); its
children x_1..x_m (best rank first) are deterministic draft proposals (q = 1), so child j is accepted with
probability p(x_j) after the rejected siblings x_1..x_{j-1} were removed from p and p renormalised:
    accept x_j  with probability  p(x_j) / (1 - p(x_1) - ... - p(x_{j-1}))
If every child is rejected, the next token is drawn from the residual (p with all children removed,
renormalised); at a leaf, from p itself. Either way the emitted token is distributed exactly as p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eaglespec.decoding.sampling import SamplingConfig, greedy_token, sample, target_probs
from eaglespec.decoding.tree import DraftTree


@dataclass
class VerifyResult:
    path: torch.Tensor  # [a + 1] node ids from the root to the deepest accepted node
    bonus_token: int  # the target's token after the accepted path

    @property
    def accept_length(self) -> int:
        """Draft tokens accepted (the bonus token excluded)."""
        return int(self.path.numel()) - 1


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> VerifyResult:
    """logits [T, V] of the tree forward -> the longest path of argmax-matching nodes and the bonus argmax."""
    argmax = greedy_token(logits)  # [T]
    matches = tree.tokens == argmax[tree.parents.clamp(min=0)]
    matches[0] = True  # the root is given
    accepted = (matches[None, :] | ~tree.mask).all(dim=-1)  # every node on the root path matches
    best = int(torch.where(accepted, tree.depths, -1).argmax())  # siblings differ: the deepest is unique
    path = tree.mask[best].nonzero().squeeze(1)  # ancestors in ascending node order = root first
    return VerifyResult(path=path, bonus_token=int(argmax[best]))


def verify_sampling(tree: DraftTree, logits: torch.Tensor, config: SamplingConfig,
                    generator: torch.Generator | None) -> VerifyResult:
    """Recursive rejection sampling over the tree; logits [T, V]. One loop step per accepted depth."""
    probs = target_probs(logits, config)  # [T, V]
    node, path = 0, [0]
    while True:
        children = (tree.parents == node).nonzero().squeeze(1)  # best rank first
        if children.numel() == 0:
            return VerifyResult(torch.tensor(path, device=logits.device), int(sample(probs[node], generator)))
        choice, residual = _sibling_acceptance(probs[node], tree.tokens[children], generator)
        if choice < 0:
            return VerifyResult(torch.tensor(path, device=logits.device), int(sample(residual, generator)))
        node = int(children[choice])
        path.append(node)


def _sibling_acceptance(p: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator | None):
    """Try the distinct candidate tokens [m] in order against p [V].

    Returns (index of the accepted candidate, None) or (-1, residual distribution [V]).
    Candidate j is accepted iff u_j * (1 - mass of the rejected candidates before it) < p(x_j), i.e. with
    probability p(x_j) renormalised after removing the rejected ones.
    """
    u = torch.rand(candidates.shape, generator=generator, device=p.device)
    pc = p[candidates]
    remaining = 1.0 - (torch.cumsum(pc, dim=0) - pc)  # mass left once candidates 0..j-1 are removed
    accepted = (u * remaining < pc).nonzero()
    if accepted.numel():
        return int(accepted[0, 0]), None
    residual = p.clone()
    residual[candidates] = 0.0
    total = residual.sum()
    # total is 0 only if the candidates held all the mass, in which case one was accepted with probability 1.
    return -1, residual / total if total > 0 else p


def accepted_length_on_path(tree: DraftTree, path: torch.Tensor) -> int:
    """Draft tokens greedy verification accepts when the target's greedy continuation is `path` [D >= tree depth]:
    the depth of the deepest node whose root path spells it (simulated acceptance, `tune`)."""
    depths = tree.depths
    expected = path.to(depths.device)[(depths - 1).clamp(min=0, max=path.numel() - 1)]
    matches = (tree.tokens == expected) | (depths == 0)
    on_path = (matches[None, :] | ~tree.mask).all(dim=-1)  # every node on the root path matches
    return int(depths[on_path].max())


def verify(tree: DraftTree, logits: torch.Tensor, config: SamplingConfig,
           generator: torch.Generator | None) -> VerifyResult:
    """Greedy when config.temperature == 0, lossless sampling otherwise."""
    if config.greedy:
        return verify_greedy(tree, logits)
    return verify_sampling(tree, logits, config, generator)

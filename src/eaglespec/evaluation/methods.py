"""The decoding methods a benchmark compares, all on the same target, process and dtype.

- `vanilla`: our one-token-per-forward loop (the baseline every speedup is relative to);
- `eagle`: tree speculative decoding with the configured (or tuned) tree, n-gram lookup included when that tree
  has it; `eagle-nolookup`: the same tree without the lookup (the draft alone); `eagle-chain`: a chain of the
  chain depth; `eagle-default`: the reference EAGLE-2 tree (60 tokens, depth 7/5, top-k 10); `lookup`: our n-gram
  lookup alone, no draft (`--lookup`, default DEFAULT_LOOKUP_TOKENS; what the draft adds to it shows against `eagle`);
- `dflash`: a DFlash draft's block of block_size - 1 tokens, drafted in one forward (lookup as for `eagle`);
- `hf`: transformers `generate` (greedy or sampling: the baseline users know);
- `pld`: transformers prompt lookup decoding (`prompt_lookup_num_tokens`);
- `assisted=PATH`: transformers assisted generation with the small model at PATH (same tokenizer);
- `llama.cpp`: the target as GGUF in a llama-server; `llama.cpp-eagle3`: the same with our EAGLE-3 draft as GGUF
  (chain drafting, `--spec-type draft-eagle3`), `llama.cpp-eagle3:n2:p0.5` with its own chain length and minimum
  draft probability (so one run compares llama.cpp's flags); `llama.cpp-dflash[:nN][:pP]` the same with our DFlash
  draft (`--spec-type draft-dflash`); built by `evaluation.llamacpp`, greedy only.

The draft methods take the draft of their kind: `eagle*` and `llama.cpp-eagle3` an EAGLE one, `dflash` and
`llama.cpp-dflash` a DFlash one, so one run can compare an EAGLE-3 and a DFlash draft (`bench --draft A B`).

Every method returns the new token ids and a `GenerationStats`; for transformers' methods the target
forwards are counted by a forward hook on the target, and the draft/verify split is not known.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from eaglespec.decoding import GenerationStats, SpeculativeGenerator, TreeConfig
from eaglespec.decoding.lookup import DEFAULT_LOOKUP_TOKENS
from eaglespec.models.config import DFLASH as DFLASH_DRAFT

EAGLE_METHODS = ("eagle", "eagle-nolookup", "eagle-chain", "eagle-default")
DFLASH = DFLASH_DRAFT  # a DFlash draft's block, as trained (n-gram lookup merged in when the tree has it)
OUR_METHODS = ("vanilla", *EAGLE_METHODS, DFLASH, "lookup")
DRAFT_METHODS = (*EAGLE_METHODS, DFLASH)
HF_METHODS = ("hf", "pld")
LLAMA_CPP, LLAMA_CPP_EAGLE3, LLAMA_CPP_DFLASH = "llama.cpp", "llama.cpp-eagle3", "llama.cpp-dflash"
LLAMA_CPP_METHODS = (LLAMA_CPP, LLAMA_CPP_EAGLE3, LLAMA_CPP_DFLASH)
EAGLE_KIND = "eagle"  # the two kinds of draft a method takes: EAGLE (1 or 3) or DFlash (models.config.DFLASH)
LLAMA_CPP_DRAFT_KINDS = {LLAMA_CPP_EAGLE3: EAGLE_KIND, LLAMA_CPP_DFLASH: DFLASH}


@dataclass(frozen=True)
class LlamaCppVariant:
    """A llama.cpp method by name: `llama.cpp` (no draft) or `llama.cpp-eagle3|dflash[:nN][:pP]` (our draft of that
    kind; N and P override --spec-draft-n-max / --spec-draft-p-min for this method)."""

    drafted: bool
    n_max: int | None = None
    p_min: float | None = None
    draft_kind: str = EAGLE_KIND


def llama_cpp_variant(name: str) -> LlamaCppVariant | None:
    """The llama.cpp method `name` names (None: not a llama.cpp method)."""
    if name == LLAMA_CPP:
        return LlamaCppVariant(drafted=False)
    base, *flags = name.split(":")
    if base not in LLAMA_CPP_DRAFT_KINDS:
        return None
    n_max = p_min = None
    for flag in flags:
        try:
            if flag[:1] == "n" and int(flag[1:]) >= 1:
                n_max = int(flag[1:])
                continue
            if flag[:1] == "p" and 0 <= float(flag[1:]) <= 1:
                p_min = float(flag[1:])
                continue
        except ValueError:
            pass
        raise ValueError(f"method {name!r}: {flag!r} is neither nN (chain length >= 1) nor pP (minimum draft "
                         "probability in [0, 1]), as in llama.cpp-eagle3:n2:p0.5")
    return LlamaCppVariant(True, n_max, p_min, LLAMA_CPP_DRAFT_KINDS[base])


def llama_cpp_draft_kinds(names: list[str]) -> set[str]:
    """The kinds of our draft (EAGLE_KIND, DFLASH) that these methods run in llama.cpp."""
    return {v.draft_kind for v in map(llama_cpp_variant, names) if v is not None and v.drafted}


def draft_kind_needed(name: str) -> str | None:
    """The kind of draft method `name` runs (EAGLE_KIND or DFLASH), None for one without a draft."""
    if name in EAGLE_METHODS:
        return EAGLE_KIND
    if name == DFLASH:
        return DFLASH
    variant = llama_cpp_variant(name)
    return variant.draft_kind if variant is not None and variant.drafted else None


def exactness_reference(name: str) -> str | None:
    """Whose answers a greedy method must repeat: vanilla's, llama.cpp's for llama.cpp with the draft; None for
    llama.cpp itself (another engine's kernels and maybe quantized weights: not classified against ours)."""
    variant = llama_cpp_variant(name)
    if variant is None:
        return "vanilla"
    return LLAMA_CPP if variant.drafted else None
DEFAULT_METHODS = ("vanilla", "hf", "eagle", "eagle-chain", "pld")
DEFAULT_CHAIN_DEPTH = 4
PLD_NUM_TOKENS = 10  # transformers' documented example value for prompt_lookup_num_tokens
PLD_MAX_MATCHING_NGRAM = 2  # transformers' default n-gram size
ASSISTED_NUM_TOKENS = 5  # draft tokens per assisted step (transformers' default)


@dataclass
class MethodRun:
    token_ids: list[int]
    stats: GenerationStats
    split_known: bool = True  # draft / verify / other times measured (our methods) or not (transformers')


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class OurMethod:
    """vanilla / eagle / eagle-chain / eagle-default through `SpeculativeGenerator`."""

    name: str
    generator: SpeculativeGenerator
    vanilla: bool = False
    tree: TreeConfig | None = None

    def run(self, ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int) -> MethodRun:
        stats = GenerationStats()
        tokens = []
        for chunk in self.generator.stream(ids, max_new_tokens, temperature=sampling.temperature,
                                           top_p=sampling.top_p, top_k=sampling.top_k, seed=seed,
                                           vanilla=self.vanilla, stats=stats):
            tokens += chunk.token_ids
        return MethodRun(tokens, stats)


class ForwardCounter:
    """Counts calls of a module's forward (one per target forward of transformers' generate)."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.count += 1


@dataclass
class HFMethod:
    """transformers `generate` with extra keyword arguments (prompt lookup, an assistant model)."""

    name: str
    generator: SpeculativeGenerator  # for its target, EOS ids and device
    counter: ForwardCounter
    extra: dict = field(default_factory=dict)

    def run(self, ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int) -> MethodRun:
        model = self.generator.target.model
        eos = sorted(self.generator.eos_token_ids())
        input_ids = self.generator.encode(ids)  # the prompt checks of our loop (PromptTooLong past the context)
        # as our loop does, stop where the model's context ends (transformers would decode past it)
        max_new_tokens = min(max_new_tokens, self.generator.context_length - len(ids))
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos[0] if eos else None,
                      do_sample=not sampling.greedy, **self.extra)
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
            torch.manual_seed(seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        self.counter.count = 0
        with torch.no_grad():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        tokens = _cut_at_eos(out[0, len(ids):].tolist(), set(eos))
        stats = GenerationStats(new_tokens=len(tokens), target_forwards=self.counter.count)
        stats.finish_reason = "stop" if tokens and tokens[-1] in eos else "length"
        return MethodRun(tokens, stats, split_known=False)


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]  # kept, as our stopping rules keep it
    return tokens


def load_assistant(path: str, generator: SpeculativeGenerator):
    """The assistant model for `assisted=PATH`; a different tokenizer is an error before the run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eaglespec.models import resolve_model_path

    path = resolve_model_path(path)
    theirs = AutoTokenizer.from_pretrained(path).get_vocab()
    if theirs != generator.tokenizer.get_vocab():
        raise ValueError(f"assisted={path}: its tokenizer differs from the target's ({len(theirs)} vs "
                         f"{len(generator.tokenizer.get_vocab())} tokens, or other ids); assisted generation "
                         "needs the same tokenizer")
    assistant = AutoModelForCausalLM.from_pretrained(path, dtype=generator.target.dtype).to(generator.target.device)
    assistant.generation_config.num_assistant_tokens = ASSISTED_NUM_TOKENS
    return assistant.eval()


def check_draft_kind(names: list[str], generator: SpeculativeGenerator) -> None:
    """EAGLE methods need an EAGLE draft and `dflash` a DFlash one: the error names the draft's method."""
    method = generator.draft.config.method if generator.draft is not None else None
    wrong = [n for n in names if (n in EAGLE_METHODS and method == DFLASH) or (n == DFLASH and method != DFLASH)]
    if wrong and method is not None:
        fits = DFLASH if method == DFLASH else ", ".join(EAGLE_METHODS)
        raise ValueError(f"methods {wrong} do not run a {method} draft; with it use {fits}")


def build_methods(names: list[str], generator: SpeculativeGenerator, chain_depth: int = DEFAULT_CHAIN_DEPTH,
                  lookup: int | None = None) -> list:
    """Method objects by name; `generator` carries the configured tree for `eagle`; `lookup`: the chain length of
    the `lookup` method (None: DEFAULT_LOOKUP_TOKENS)."""
    check_draft_kind(names, generator)
    methods, counter = [], None
    for name in names:
        if name in HF_METHODS or name.startswith("assisted="):
            counter = counter or ForwardCounter(generator.target.model)
        if name == "vanilla":
            methods.append(OurMethod(name, generator, vanilla=True))
        elif name in ("eagle", DFLASH):
            methods.append(OurMethod(name, generator, tree=generator.tree))
        elif name in ("eagle-nolookup", "eagle-chain", "eagle-default"):
            tree = {"eagle-nolookup": dataclasses.replace(generator.tree, lookup=0),
                    "eagle-chain": TreeConfig(kind="chain", depth=chain_depth)}.get(name, TreeConfig())
            methods.append(OurMethod(name, generator.with_tree(tree), tree=tree))
        elif name == "lookup":
            tree = TreeConfig(lookup=lookup or DEFAULT_LOOKUP_TOKENS)
            methods.append(OurMethod(name, SpeculativeGenerator(generator.target, None, generator.tokenizer, tree),
                                     tree=tree))
        elif name == "hf":
            methods.append(HFMethod(name, generator, counter))
        elif name == "pld":
            methods.append(HFMethod(name, generator, counter, {"prompt_lookup_num_tokens": PLD_NUM_TOKENS,
                                                              "max_matching_ngram_size": PLD_MAX_MATCHING_NGRAM}))
        elif name.startswith("assisted="):
            methods.append(HFMethod(name, generator, counter,
                                    {"assistant_model": load_assistant(name.split("=", 1)[1], generator)}))
        else:
            known = ", ".join(OUR_METHODS + HF_METHODS + LLAMA_CPP_METHODS)
            raise ValueError(f"unknown method {name!r}; known: {known}, assisted=PATH, llama.cpp-eagle3:nN:pP, "
                             "llama.cpp-dflash:nN:pP")
    return methods

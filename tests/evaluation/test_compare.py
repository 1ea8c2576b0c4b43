"""Side-by-side comparison with vanilla decoding."""


from eaglespec.decoding import SpeculativeGenerator
from eaglespec.evaluation import compare_with_vanilla
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

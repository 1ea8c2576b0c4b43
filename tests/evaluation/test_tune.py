"""`eaglespec tune` / `--tree auto`: the cost model only short-lists; real decoding of the calibration prompts,
interleaved with vanilla, picks the tree and gives the prediction that bench compares with."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import stories260k
from replay_helpers import decoded_steps_within
from transformers import AutoTokenizer

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.decoding.cache import new_cache
from eaglespec.evaluation import tune, tune_cost
from eaglespec.models import TargetModel, build_draft, bundled_model_path

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["Once upon a time", "Tom had a big red ball. He"]


@pytest.fixture(scope="module")
def generator():
    target = TargetModel(stories260k())
    return SpeculativeGenerator(target, build_draft(target, "eagle3", seed=3),
                                AutoTokenizer.from_pretrained(bundled_model_path()))


@pytest.fixture
def small_search(monkeypatch):
    """Few candidates and short continuations, so a whole tune takes seconds."""
    monkeypatch.setattr(tune_cost, "FORWARD_REPEATS", 1)
    for name, value in {"CALIBRATION_NEW_TOKENS": 16, "MAX_TUNE_DEPTH": 4, "LOOKUP_TOKENS": (0, 4),
                        "DYNAMIC_TOP_K": (2, 4), "DYNAMIC_DEPTHS": (3,), "DYNAMIC_TOTALS": (8, 12)}.items():
        monkeypatch.setattr(tune, name, value)


def test_measurement_not_the_cost_model_picks_the_tree(monkeypatch, generator, small_search):
    chain4 = TreeConfig(kind="chain", depth=4)
    timed = []

    def fake_decode(gen, tree, prompts, new_tokens):  # chain-4 is by far the fastest, whatever the cost model said
        timed.append(tree)
        return (1000.0 if tree == chain4 else 10.0 if tree is None else 100.0), 1.5

    monkeypatch.setattr(tune, "_decode_all", fake_decode)
    result = tune.tune_tree(generator, PROMPTS, log=lambda *_: None)
    measured = [c for c in result.candidates if c.measured_tokens_per_s is not None]
    method = generator.draft.config.method
    trees = [c.tree for c in measured]
    assert TreeConfig().summary(method) in trees and chain4.summary(method) in trees
    assert 3 <= len(measured) <= tune.FINALISTS + 3
    assert result.choice == chain4.summary(method) and measured[0].tree == result.choice
    assert result.predicted_tokens_per_s == 1000 and result.predicted_tau == 1.5
    assert result.vanilla_predicted_tokens_per_s == 10 and result.vanilla_note() is None
    rest = result.candidates[len(measured):]
    assert [c.predicted_tokens_per_s for c in rest] == sorted((c.predicted_tokens_per_s for c in rest), reverse=True)
    assert timed.count(None) == tune.MEASURE_ROUNDS  # vanilla timed alongside, every round
    assert result.context_tokens > max(len(generator.encode(p)[0]) for p in PROMPTS)  # prompt + continuation


def test_rounds_interleave_forward_then_reversed_and_report_medians(monkeypatch, generator):
    order, speeds = [], {None: iter([9.0, 1.0, 5.0]), "a": iter([3.0, 4.0, 8.0]), "b": iter([2.0, 2.0, 2.0])}

    def fake_decode(gen, tree, prompts, new_tokens):
        order.append(tree)
        return next(speeds[tree]), 2.0

    monkeypatch.setattr(tune, "_decode_all", fake_decode)
    measured, vanilla = tune.measure_trees(generator, ["a", "b"], PROMPTS, 16, rounds=3)
    assert order == [None, "a", "b", "b", "a", None, None, "a", "b"]
    assert vanilla == 5.0 and measured == [(4.0, 2.0), (2.0, 2.0)]


def test_real_decoding_of_the_finalists_is_what_is_reported(generator, small_search):
    result = tune.tune_tree(generator, PROMPTS, log=lambda *_: None)
    best = max((c for c in result.candidates if c.measured_tokens_per_s), key=lambda c: c.measured_tokens_per_s)
    assert result.choice == best.tree and result.predicted_tokens_per_s == best.measured_tokens_per_s > 0
    assert 1.0 <= result.predicted_tau <= 1 + tune.MAX_TUNE_DEPTH
    assert result.vanilla_predicted_tokens_per_s > 0
    assert sorted(result.forward_ms) == list(tune_cost.FORWARD_TOKEN_COUNTS)


def test_the_choice_is_written_into_the_draft_config_and_used_by_default(tmp_path, generator, small_search):
    generator.draft.save_pretrained(tmp_path / "draft")
    result = tune.tune_tree(generator, PROMPTS, log=lambda *_: None)
    tune.write_tuned_tree(tmp_path / "draft", result, generator)
    stored = json.loads((tmp_path / "draft" / "config.json").read_text())["decoding"]
    assert stored["tree"] == result.choice
    assert stored["predicted_tokens_per_s"] == round(result.predicted_tokens_per_s, 2)
    loaded = SpeculativeGenerator.from_pretrained("stories260K", tmp_path / "draft")
    assert loaded.tree == result.tree_config()


def test_calibration_prompts_come_from_a_question_file(tmp_path, generator):
    text = tmp_path / "mine.txt"
    text.write_text("The dog ran home.\nA red kite flew high.\n")
    prompts = tune.calibration_prompts(generator, text)
    assert prompts == [generator.tokenizer(line)["input_ids"] for line in text.read_text().splitlines()]
    assert tune.calibration_prompts(generator) == tune.CALIBRATION_TEXT  # a base model: the story openings


def test_calibration_runs_at_the_answer_length_it_is_given(monkeypatch, generator, small_search):
    lengths = []

    def fake_decode(gen, tree, prompts, new_tokens):
        lengths.append(new_tokens)
        return 100.0, 1.5

    monkeypatch.setattr(tune, "_decode_all", fake_decode)
    short = tune.tune_tree(generator, PROMPTS, log=lambda *_: None)
    long = tune.tune_tree(generator, PROMPTS, log=lambda *_: None, new_tokens=40)
    assert short.new_tokens == 16 and long.new_tokens == 40  # 16: the (patched) CALIBRATION_NEW_TOKENS
    assert set(lengths) == {16, 40}
    assert long.context_tokens > short.context_tokens  # the forwards were timed at the longer context


def test_a_long_calibration_file_gives_a_few_prompts_spread_over_it(tmp_path, generator):
    text = tmp_path / "many.txt"
    text.write_text("".join(f"Prompt number {i} is here.\n" for i in range(40)))
    prompts = tune.calibration_prompts(generator, text)
    assert len(prompts) == tune.CALIBRATION_PROMPTS
    expected = [generator.tokenizer(f"Prompt number {i} is here.")["input_ids"] for i in range(0, 40, 5)]
    assert prompts == expected


def test_bench_refuses_to_calibrate_on_its_own_questions(tmp_path):
    from eaglespec.evaluation.benchmark import BenchOptions, check_calibration

    questions = tmp_path / "q.txt"
    questions.write_text("Once upon a time\n")
    with pytest.raises(ValueError, match="benchmark's own questions"):
        check_calibration(BenchOptions(base="stories260K", questions=[str(questions)], tree="auto",
                                       calibration=str(tmp_path / "." / "q.txt")))
    with pytest.raises(ValueError, match="give --tree auto"):
        check_calibration(BenchOptions(base="stories260K", questions=[str(questions)], calibration="other.txt"))
    check_calibration(BenchOptions(base="stories260K", questions=[str(questions)], tree="auto",
                                   calibration="other.txt"))


def test_a_draft_slower_than_vanilla_is_said_to_be(monkeypatch, generator, small_search):
    monkeypatch.setattr(tune, "_decode_all", lambda gen, tree, prompts, new_tokens: (10.0 if tree else 50.0, 1.2))
    result = tune.tune_tree(generator, PROMPTS, log=lambda *_: None)
    assert "vanilla decoding was faster than every tree" in result.vanilla_note()


def test_bench_puts_the_measured_speed_next_to_the_prediction():
    from eaglespec.evaluation.benchmark import check_prediction
    from eaglespec.evaluation.report import tune_line

    predicted = {"predicted_tokens_per_s": 30.0, "predicted_tau": 2.0, "vanilla_predicted_tokens_per_s": 20.0,
                 "predicted_speedup": 1.5, "new_tokens": 128}
    check_prediction(predicted, {"eagle": {"tokens_per_s": 27.0, "tau": 1.9}, "vanilla": {"tokens_per_s": 18.0}})
    assert predicted["prediction_error"] == pytest.approx(30 / 27 - 1)  # 30 predicted, 27 measured: 11.1% high
    assert predicted["predicted_at_run_vanilla"] == pytest.approx(27.0)  # 1.5x of this run's vanilla 18
    assert predicted["prediction_error_at_run_vanilla"] == pytest.approx(0.0)
    assert "+11.1% off" in tune_line(predicted) and "+0.0%" in tune_line(predicted)
    assert "128 new tokens" in tune_line(predicted) and "1.50x" in tune_line(predicted)


def test_forward_sizes_are_timed_in_interleaved_rounds(monkeypatch, generator):
    """A load that passes while the table is taken (as another job ending) must not land on a few sizes
    only: the sizes alternate direction round by round and each size's figure is the median of its rounds."""
    order, clock = [], iter(range(1, 100))

    def fake_forward(gen, cache, last, n, T):
        order.append(T)
        return 1.0 if next(clock) == 2 else T / 1000  # the second forward of the run hits a passing load

    monkeypatch.setattr(tune_cost, "forward_seconds", fake_forward)
    table = tune_cost.time_forwards(generator, [1, 5, 7, 9], counts=(1, 4, 16), repeats=3)
    assert order == [1, 4, 16, 16, 4, 1, 1, 4, 16]
    assert table == pytest.approx({1: 1.0, 4: 4.0, 16: 16.0})


def test_a_forward_is_timed_on_the_cached_sequence_and_the_cache_is_cut_back(generator):
    cache = new_cache()
    ids = torch.tensor([[1, 5, 7, 9]])
    generator.target(ids, cache=cache)
    assert tune_cost.forward_seconds(generator, cache, ids[:, -1:], 4, 8) > 0
    assert cache.get_seq_length() == 4


def test_short_calibration_prompts_get_the_workloads_context_from_the_others(generator):
    ids = [generator.encode(p)[0].tolist() for p in PROMPTS + ["A cat sat on a mat."]]
    padded = tune.with_context(generator, PROMPTS + ["A cat sat on a mat."], 12)
    assert [len(p) for p in padded] == [max(12, len(p)) for p in ids]
    for prompt, out in zip(ids, padded):
        assert out[len(out) - len(prompt):] == prompt  # the prompt itself ends the context, unchanged
    assert padded[0][:-len(ids[0])] == (ids[2] + ids[1])[-(12 - len(ids[0])):]  # the next prompt nearest, cut on the left
    assert tune.with_context(generator, PROMPTS, None) == ids[:2]
    assert tune.with_context(generator, PROMPTS, 2) == ids[:2]  # longer prompts are left as they are


def test_tune_decodes_at_the_prompt_length_it_is_given(monkeypatch, generator, small_search):
    seen = []

    def fake_decode(gen, tree, prompts, new_tokens):
        seen.append([len(p) for p in prompts])
        return 100.0, 1.5

    monkeypatch.setattr(tune, "_decode_all", fake_decode)
    plain = tune.tune_tree(generator, PROMPTS, log=lambda *_: None)
    padded = tune.tune_tree(generator, PROMPTS, log=lambda *_: None, prompt_tokens=30)
    assert padded.prompt_tokens == 30 and plain.prompt_tokens < 10
    assert seen[-1] == [30, 30]  # vanilla and every tree decode the lengthened prompts
    assert padded.context_tokens > plain.context_tokens


def test_bench_tunes_at_its_questions_mean_prompt_length(monkeypatch, tmp_path, generator, small_search):
    from eaglespec.evaluation import benchmark
    from eaglespec.evaluation.questions import load_question_set

    questions = tmp_path / "q.txt"
    questions.write_text("Once upon a time there was a girl who liked to run in the park with her big brown dog, "
                         "and every day after school they ran to the old tree by the river and back again\nTom had a dog\n")
    qs = load_question_set([str(questions)])
    want = round(sum(len(generator.tokenizer(q.turns[0])["input_ids"]) for q in qs.questions) / 2)
    seen = {}

    def fake_decode(gen, tree, prompts, new_tokens):
        seen["lengths"] = [len(p) for p in prompts]
        return 100.0, 1.5

    monkeypatch.setattr(tune, "_decode_all", fake_decode)
    opts = benchmark.BenchOptions(base="stories260K", questions=[str(questions)], tree="auto", max_new_tokens=16)
    _, result = benchmark.tune_for_workload(generator, opts, qs, None, log=lambda *_: None)
    assert want > max(len(generator.encode(p)[0]) for p in tune.CALIBRATION_TEXT)  # the built-in ones are shorter
    assert result["prompt_tokens"] == want and seen["lengths"] == [want] * len(tune.CALIBRATION_TEXT)


def test_the_workload_length_leaves_out_questions_bench_skips_and_leaves_room_to_answer():
    from eaglespec.evaluation.benchmark import workload_prompt_tokens

    assert workload_prompt_tokens([100, 200, 634], 512, 128) == 150  # 634 >= 512 tokens: bench skips it
    assert workload_prompt_tokens([400, 450], 512, 128) == 384  # capped: a 128-token answer still fits
    assert workload_prompt_tokens([600], 512, 128) is None  # nothing bench would run: tune as it is
    assert workload_prompt_tokens([10], 512, 1024) is None  # answers longer than the context: no padding


def test_tune_refuses_a_prompt_length_that_leaves_no_room_for_the_answer(generator):
    with pytest.raises(ValueError, match="exceed the model's context"):
        tune.tune_tree(generator, PROMPTS, log=lambda *_: None, new_tokens=16,
                       prompt_tokens=generator.context_length - 8)


def test_the_best_trees_are_replayed_with_and_without_lookup_and_the_best_plain_one_is_timed(
        monkeypatch, generator, small_search):
    def fake_decode(gen, tree, prompts, new_tokens):
        return (50.0 if tree is not None and tree.lookup else 10.0), 1.5

    monkeypatch.setattr(tune, "_decode_all", fake_decode)
    result = tune.tune_tree(generator, PROMPTS, log=lambda *_: None)
    looked = [c for c in result.candidates if c.tree.get("lookup")]
    assert len(looked) == tune.WALKED * (len(tune.LOOKUP_TOKENS) - 1)
    by_tree = {json.dumps(c.tree, sort_keys=True): c for c in result.candidates}
    for c in looked:  # the same draft proposals as the tree alone, so the same propose time
        plain = by_tree[json.dumps({k: v for k, v in c.tree.items() if k != "lookup"}, sort_keys=True)]
        assert plain.propose_ms == c.propose_ms and c.size >= plain.size
    best_plain = max((c for c in result.candidates if "lookup" not in c.tree), key=lambda c: c.predicted_tokens_per_s)
    assert best_plain.measured_tokens_per_s is not None  # timed even when lookup trees fill the shortlist
    assert result.choice.get("lookup") == 4  # the faster measured variant wins, and is stored with its lookup
    assert TreeConfig.merged(result.choice, {}).lookup == 4


@pytest.mark.parametrize("lookup", [0, 8])
def test_a_replay_accepts_what_decoding_accepts(monkeypatch, generator, lookup):
    """Replaying a greedy continuation from its states gives the steps real decoding takes (fp32)."""
    monkeypatch.setattr(tune, "LOOKUP_TOKENS", (lookup,))
    tree = TreeConfig(kind="dynamic", top_k=4, depth=3, total_tokens=8)
    prompt = generator.encode("Once upon a time, there was a little girl named Lily.")[0].tolist()
    decoded = generator.with_tree(TreeConfig(**{**tree.__dict__, "lookup": lookup})).generate(prompt, 100,
                                                                                            eos_token_id=[])
    walks = tune.decoding_states(generator, [(len(prompt), prompt + decoded.token_ids)])
    (_, tau, _), = tune.replay_tree(generator, tree, walks)
    steps = decoded_steps_within(decoded.stats.accept_lengths, len(walks[0]))  # the stretch replayed
    assert tau == pytest.approx(sum(steps) / len(steps))
    assert lookup == 0 or decoded.stats.lookup_tokens > 0


def test_bench_tunes_in_a_child_process_and_raises_its_errors(tmp_path):
    """--tree auto tunes in a spawned process (a process that just tuned decodes slower); the choice comes back,
    and an error in the child is raised in the parent."""
    from eaglespec.evaluation import benchmark
    from eaglespec.evaluation.questions import load_question_set

    target = TargetModel(stories260k())
    build_draft(target, "eagle3", seed=3).save_pretrained(tmp_path / "draft")
    questions = tmp_path / "q.txt"
    questions.write_text("Once upon a time\n")
    qs = load_question_set([str(questions)])
    generator = SpeculativeGenerator.from_pretrained("stories260K", tmp_path / "draft")
    opts = benchmark.BenchOptions(base="stories260K", draft=str(tmp_path / "draft"), questions=[str(questions)],
                                  tree="auto", max_new_tokens=24)
    tuned, result = benchmark.tune_for_workload(generator, opts, qs, None, log=lambda *_: None, isolated=True)
    assert tuned.tree.summary("eagle3") == result["choice"] and result["predicted_tokens_per_s"] > 0
    opts.calibration = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        benchmark.tune_for_workload(generator, opts, qs, None, log=lambda *_: None, isolated=True)

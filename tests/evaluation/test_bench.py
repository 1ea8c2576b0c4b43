"""`eaglespec bench` arithmetic on a fake engine with known acceptances, the interleaving order, question
schemas and the near-tie classifier."""

import gzip
import json

import pytest
import torch

from eaglespec.decoding import GenerationStats
from eaglespec.evaluation.bench import BenchSetup, QuestionRun, run_rounds, summarise_all
from eaglespec.evaluation.exactness import EXACT, MISMATCH, NEAR_TIE, classify, near_tie_threshold
from eaglespec.evaluation.methods import MethodRun, Sampling
from eaglespec.evaluation.questions import QuestionSet, load_question_set, prompt_ids, read_questions


def stats_with(accepts: list[int], depth: int) -> GenerationStats:
    """A speculative run whose steps accepted `accepts` draft tokens (plus the bonus) in a tree of `depth`."""
    s = GenerationStats()
    for a in accepts:
        s.record_step(a, depth)
    s.new_tokens = 1 + sum(a + 1 for a in accepts)  # the prefill's token, then accepted + bonus per step
    s.target_forwards = 1 + len(accepts)
    return s


def run(method, qid, round_, seconds, stats, category="c"):
    return QuestionRun(qid, category, method, round_, [[1]], [[0] * stats.new_tokens], seconds, stats, True)


def test_tau_acceptance_by_depth_and_speedup_from_known_acceptances():
    spec = stats_with([2, 0, 3, 1], depth=3)  # 4 steps
    # tokens: 1 + 3 + 1 + 4 + 2 = 11 over 5 forwards
    assert spec.new_tokens == 11 and spec.tau == pytest.approx(11 / 5)
    # depth 1 attempted 4x accepted 3x; depth 2 attempted 3x (steps with a>=1) accepted 2x (a>=2);
    # depth 3 attempted 2x (a>=2) accepted 1x (a=3; a capped at depth)
    assert spec.acceptance_rate_per_depth == pytest.approx([3 / 4, 2 / 3, 1 / 2])
    vanilla = GenerationStats(new_tokens=11, target_forwards=11)
    runs = [run("vanilla", "q", r, s, vanilla) for r, s in enumerate((2.0, 1.0, 4.0))]  # medians: 11/2 tok/s
    runs += [run("eagle", "q", r, s, spec) for r, s in enumerate((0.5, 1.0, 2.0))]  # median 11/1
    out = summarise_all(runs, ["vanilla", "eagle"], rounds=3)
    assert out["vanilla"].tokens_per_s == pytest.approx(5.5) and out["vanilla"].tau == pytest.approx(1.0)
    assert out["eagle"].tokens_per_s == pytest.approx(11.0)
    assert out["eagle"].speedup == pytest.approx(2.0) and out["vanilla"].speedup == pytest.approx(1.0)
    assert out["eagle"].tau == pytest.approx(11 / 5)  # three identical rounds
    assert out["eagle"].acceptance_by_depth == pytest.approx([3 / 4, 2 / 3, 1 / 2])


def test_tokens_per_s_of_a_round_is_total_tokens_over_total_seconds():
    a, b = GenerationStats(new_tokens=10, target_forwards=10), GenerationStats(new_tokens=30, target_forwards=30)
    runs = [run("vanilla", "q1", 0, 1.0, a), run("vanilla", "q2", 0, 3.0, b)]
    assert summarise_all(runs, ["vanilla"], 1)["vanilla"].tokens_per_s == pytest.approx(40 / 4.0)


class FakeTokenizer:
    chat_template = None

    def __call__(self, text):
        return {"input_ids": [len(text)]}

    def decode(self, ids, skip_special_tokens=True):
        return "x" * len(ids)


class FakeMethod:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, ids, max_new_tokens, sampling, seed):
        self.log.append(self.name)
        return MethodRun([7] * 3, GenerationStats(new_tokens=3, target_forwards=3))


def test_rounds_are_interleaved_and_reversed_after_a_warm_up():
    from types import SimpleNamespace

    from eaglespec.evaluation.questions import Question

    log = []
    methods = [FakeMethod(n, log) for n in "ABC"]
    gen = SimpleNamespace(tokenizer=FakeTokenizer(), target=SimpleNamespace(device=torch.device("cpu")))
    qs = QuestionSet([Question("q0", "c", "completion", ["p"]), Question("q1", "c", "completion", ["p"])])
    result = run_rounds(BenchSetup(gen, qs, methods, 8, 2, Sampling()))
    assert "".join(log) == "ABC" + "ABC" + "CBA" + "CBA" + "ABC"  # warm-up, q0 r0, q0 r1, q1 r0, q1 r1
    assert result.complete and len(result.runs) == 12


# ------------------------------------------------------------------------------------------------
# Question schemas
# ------------------------------------------------------------------------------------------------

def write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_mt_bench_schema_and_categories(tmp_path):
    from paths import shared_path

    mt_bench = shared_path("data", "eval", "eagle_mt_bench_question.jsonl")
    qs = read_questions(mt_bench)
    assert len(qs) == 80 and all(q.kind == "chat" and q.num_turns == 2 for q in qs)
    assert len({q.category for q in qs}) == 8
    every_second = load_question_set([str(mt_bench)], every=2)
    assert len(every_second.questions) == 40 and len(every_second.categories) == 8


def test_spec_bench_humaneval_infilling_and_plain_text(tmp_path):
    from paths import shared_path

    spec = read_questions(write(tmp_path / "s.jsonl", [{"category": "translation", "turns": ["Translate: hola"]}]))
    assert spec[0].kind == "chat" and spec[0].category == "translation"
    he = read_questions(shared_path("data", "eval", "HumanEval.jsonl.gz"))
    assert len(he) == 164 and he[0].kind == "completion" and he[0].category == "humaneval"
    assert he[0].id == "HumanEval/0" and he[0].turns[0].startswith("from typing import List")
    fim = read_questions(shared_path("data", "fim", "HumanEval-SingleLineInfilling.jsonl.gz"))
    assert fim[0].kind == "fim" and fim[0].suffix
    data = read_questions(write(tmp_path / "f.jsonl", [{"id": "x1", "prefix": "def f(", "middle": "a", "suffix": "):"}]))
    assert (data[0].kind, data[0].id, data[0].turns, data[0].suffix) == ("fim", "x1", ["def f("], "):")
    (tmp_path / "plain.txt").write_text("Once upon a time\n\nThe cat\n")
    plain = read_questions(tmp_path / "plain.txt")
    assert [q.turns for q in plain] == [["Once upon a time"], ["The cat"]] and plain[1].source.endswith(":3")


def test_unknown_schema_names_the_file_line_and_fields(tmp_path):
    path = write(tmp_path / "q.jsonl", [{"turns": ["ok"]}, {"question": "what?", "answer": 1}])
    with pytest.raises(ValueError, match=r"q.jsonl:2: unknown question schema: fields found \['answer', 'question'\]"):
        read_questions(path)
    gz = tmp_path / "bad.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl.gz:1: invalid JSON"):
        read_questions(gz)


def test_second_turn_is_conditioned_on_the_methods_own_first_answer():
    from transformers import AutoTokenizer

    from eaglespec.evaluation.questions import Question
    from paths import shared_path

    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen2.5"))
    q = Question("q", "writing", "chat", ["First question?", "Second question?"])
    ids = prompt_ids(q, 1, ["MY OWN ANSWER"], tok)
    messages = [{"role": "user", "content": "First question?"}, {"role": "assistant", "content": "MY OWN ANSWER"},
                {"role": "user", "content": "Second question?"}]
    assert ids == list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert prompt_ids(q, 0, [], tok) == list(tok.apply_chat_template(messages[:1], add_generation_prompt=True,
                                                                     return_dict=True)["input_ids"])


def test_chat_questions_on_a_tokenizer_without_template_are_plain_text():
    from eaglespec.evaluation.questions import Question
    from fixtures import stories260k_tokenizer

    tok = stories260k_tokenizer()
    q = Question("q", "writing", "chat", ["Once upon a time", "The end"])
    assert prompt_ids(q, 1, ["there was a cat."], tok) == tok("Once upon a time\n\nthere was a cat.\n\nThe end")["input_ids"]


# ------------------------------------------------------------------------------------------------
# Near-tie classifier
# ------------------------------------------------------------------------------------------------

def fake_logits(values: dict[int, float], vocab: int = 8):
    def next_logits(ids):
        logits = torch.full((vocab,), -5.0)
        for t, v in values.items():
            logits[t] = v
        return logits

    return next_logits


def test_planted_near_tie_and_real_mismatch():
    prompts, vanilla = [[1, 2]], [[3, 4, 5]]
    tie = fake_logits({4: 10.0, 6: 10.0 - 0.05})  # 0.05 < 4 * 2^-7 * 10 = 0.3125
    e = classify(prompts, vanilla, [[3, 6, 6]], torch.bfloat16, tie)
    assert e.status == NEAR_TIE and e.position == 1 and e.expected == 4 and e.got == 6
    assert e.gap == pytest.approx(0.05, abs=1e-6) and e.threshold == pytest.approx(near_tie_threshold(torch.bfloat16, 10.0))
    clear = fake_logits({4: 10.0, 6: 7.0})  # 3 logits apart: no rounding flips that
    assert classify(prompts, vanilla, [[3, 6, 6]], torch.bfloat16, clear).status == MISMATCH
    # the same 0.05 gap is far beyond fp32's resolution
    assert classify(prompts, vanilla, [[3, 6, 6]], torch.float32, tie).status == MISMATCH
    assert classify(prompts, vanilla, [[3, 4, 5]], torch.bfloat16, clear).status == EXACT
    # an output that stops early where vanilla goes on is not a rounding flip
    assert classify(prompts, vanilla, [[3, 4]], torch.bfloat16, tie).status == MISMATCH


def test_a_bf16_drift_beyond_the_fp32_threshold_is_judged_in_the_run_dtype():
    # fp32 puts the two tokens 0.62 apart, beyond bf16's 4 ulps at logit 9.5 (0.30); the bf16 forward has them
    # 0.0625 apart: the rounding of the run dtype flips them, as measured on SmolLM2 (exactness.py docstring)
    prompts, vanilla, spec = [[1, 2]], [[3, 4, 5]], [[3, 6, 6]]
    fp32, bf16 = fake_logits({4: 9.52, 6: 9.52 - 0.62}), fake_logits({4: 9.5, 6: 9.5 - 0.0625})
    e = classify(prompts, vanilla, spec, torch.bfloat16, fp32, bf16)
    assert e.status == NEAR_TIE and e.gap == pytest.approx(0.62, abs=1e-5) and e.run_gap == pytest.approx(0.0625)
    assert e.threshold == pytest.approx(near_tie_threshold(torch.bfloat16, 9.5))
    # a wrong token is far from the argmax in the run dtype too
    wrong = fake_logits({4: 9.5, 6: 7.0})
    e = classify(prompts, vanilla, spec, torch.bfloat16, fp32, wrong)
    assert e.status == MISMATCH and e.run_gap == pytest.approx(2.5)
    # within fp32's threshold the run dtype is not consulted; an fp32 run has only fp32 to judge by
    assert classify(prompts, vanilla, spec, torch.bfloat16, bf16, wrong).run_gap is None
    assert classify(prompts, vanilla, spec, torch.float32, fp32, bf16).status == MISMATCH


def test_a_difference_in_turn_two_is_classified_at_turn_two():
    seen = []

    def logits(ids):
        seen.append(list(ids))
        return fake_logits({8: 1.0, 9: 1.0}, vocab=10)(ids)

    e = classify([[1], [1, 2, 3]], [[2], [8, 8]], [[2], [8, 9]], torch.bfloat16, logits)
    assert e.status == NEAR_TIE and e.turn == 1 and e.position == 1
    assert seen == [[1, 2, 3, 8]]  # turn two's prompt plus the common prefix


def test_generate_cli_batch_size_gives_the_batch_size_1_outputs(tmp_path, capsys):
    from eaglespec.cli import main

    draft = tmp_path / "d3"
    assert main(["init-draft", "--base", "stories260K", "--method", "eagle3", "--output", str(draft)]) == 0
    (tmp_path / "p.txt").write_text("Once upon a time\nThe little cat\nTom and Lily went\n")
    args = ["generate", "--base", "stories260K", "--draft", str(draft), "--input", str(tmp_path / "p.txt"),
            "--max-new-tokens", "12", "--json"]
    capsys.readouterr()
    assert main(args) == 0
    alone = [json.loads(line)["token_ids"] for line in capsys.readouterr().out.splitlines()]
    assert main(args + ["--batch-size", "2"]) == 0
    batched = [json.loads(line)["token_ids"] for line in capsys.readouterr().out.splitlines()]
    assert batched == alone and len(alone) == 3


def test_bench_throughput_mode_writes_its_figures(tmp_path):
    from eaglespec.commands.bench import run_benchmark
    from eaglespec.evaluation.benchmark import BenchOptions

    draft = tmp_path / "d3"
    from eaglespec.cli import main

    assert main(["init-draft", "--base", "stories260K", "--method", "eagle3", "--output", str(draft)]) == 0
    (tmp_path / "p.txt").write_text("Once upon a time\nThe little cat\nTom and Lily went\n")
    opts = BenchOptions(base="stories260K", draft=str(draft), questions=[str(tmp_path / "p.txt")], max_new_tokens=8,
                        repeats=1, batch_size=2, output=str(tmp_path / "out"))
    assert run_benchmark(opts, log=lambda *_: None) == 0
    data = json.loads((tmp_path / "out" / "throughput_bs2.json").read_text())
    assert set(data["methods"]) == {"vanilla", "eagle", "hf", "eagle-bs1"}
    # greedy: every method produces the same number of new tokens on the same prompts
    assert len({m["new_tokens"] for m in data["methods"].values()}) == 1
    assert data["methods"]["vanilla"]["speedup_vs_vanilla"] == pytest.approx(1.0)
    # methods given: only those (a subset of the defaults was once replaced by all four)
    opts.methods, opts.output = ["vanilla", "eagle"], str(tmp_path / "two")
    logged = []
    assert run_benchmark(opts, log=logged.append) == 0
    assert set(json.loads((tmp_path / "two" / "throughput_bs2.json").read_text())["methods"]) == {"vanilla", "eagle"}
    eagle_row = next(line for line in logged if line.startswith("| eagle |"))
    assert eagle_row.split(" | ")[3:5] == ["-", "-"] and "nan" not in eagle_row  # hf and eagle-bs1 were not run
    opts.methods = ["vanilla", "pld"]
    with pytest.raises(ValueError, match="not \\['pld'\\]"):
        run_benchmark(opts, log=lambda *_: None)


def test_a_question_beyond_the_context_is_skipped_for_every_method_and_reported(tmp_path):
    """stories260K holds 512 tokens: an MT-bench-length prompt is skipped (all methods' runs of it dropped),
    named in results.json and report.md, and the other questions are measured, instead of the run dying."""
    from eaglespec.cli import main
    from eaglespec.commands.bench import run_benchmark
    from eaglespec.evaluation.benchmark import BenchOptions

    draft = tmp_path / "d3"
    assert main(["init-draft", "--base", "stories260K", "--method", "eagle3", "--output", str(draft)]) == 0
    long_line = "Once upon a time there was a very long story. " * 60  # ~ 1000+ tokens of a 512-token vocabulary
    # the long one second: the reversed order of odd questions starts with a transformers method
    (tmp_path / "p.txt").write_text(f"Once upon a time\n{long_line}\nThe little cat\n")
    logged = []
    opts = BenchOptions(base="stories260K", draft=str(draft), questions=[str(tmp_path / "p.txt")],
                        methods=["vanilla", "eagle", "hf"], max_new_tokens=8, repeats=1,
                        output=str(tmp_path / "out"))
    assert run_benchmark(opts, log=logged.append) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    (skipped,) = data["skipped"]
    assert "context holds 512" in data["skipped"][skipped]
    measured = {r["question_id"] for r in data["runs"]}
    assert skipped not in measured and len(measured) == 2
    assert any(f"skipped question {skipped}" in line for line in logged)
    assert "Skipped 1 question(s)" in (tmp_path / "out" / "report.md").read_text()


def test_transformers_methods_stop_where_the_context_ends_as_ours_do(tmp_path):
    """A prompt a few tokens short of stories260K's 512: vanilla stops at the context's end; hf and pld must
    too (transformers would decode past it and be reported as a MISMATCH)."""
    from transformers import AutoTokenizer

    from eaglespec.models import bundled_model_path
    from eaglespec.cli import main
    from eaglespec.commands.bench import run_benchmark
    from eaglespec.evaluation.benchmark import BenchOptions

    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    words = ("Once upon a time there was a little girl named Lily. " * 80).split(" ")
    line = " ".join(w for i, w in enumerate(words) if len(tok(" ".join(words[:i + 1]))["input_ids"]) <= 506)
    n = len(tok(line)["input_ids"])
    assert 500 <= n <= 506
    draft = tmp_path / "d3"
    assert main(["init-draft", "--base", "stories260K", "--method", "eagle3", "--output", str(draft)]) == 0
    (tmp_path / "p.txt").write_text(line + "\n")
    opts = BenchOptions(base="stories260K", draft=str(draft), questions=[str(tmp_path / "p.txt")],
                        methods=["vanilla", "hf", "pld"], max_new_tokens=32, repeats=1, output=str(tmp_path / "out"))
    assert run_benchmark(opts, log=lambda *_: None) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    lengths = {r["method"]: len(r["turns"][0]) for r in data["runs"]}
    assert lengths["vanilla"] < 32 and lengths["hf"] == lengths["pld"] == lengths["vanilla"]
    assert all(c["counts"]["MISMATCH"] == 0 for c in data["exactness"].values())


def test_a_ratio_without_its_baseline_is_a_dash_not_dash_x():
    from eaglespec.evaluation.bench import MethodSummary
    from eaglespec.evaluation.report import method_table

    rows = method_table({"eagle": MethodSummary("eagle", 30.0, [30.0], 128, 64, 2.0, [0.5], None, speedup=1.25)})
    assert rows[-1].startswith("| eagle | 30.0 | 1.25x | - | 2.00 |")


def test_eagle_with_lookup_next_to_the_same_tree_without_it(tmp_path):
    """--lookup N gives eagle the n-gram lookup; eagle-nolookup runs the same tree without it, lookup the lookup
    without a draft; the report says
    what share of the accepted draft tokens only the lookup proposed, and both stay exact in fp32."""
    from eaglespec.cli import main
    from eaglespec.commands.bench import run_benchmark
    from eaglespec.evaluation.benchmark import BenchOptions

    draft = tmp_path / "d3"
    assert main(["init-draft", "--base", "stories260K", "--method", "eagle3", "--output", str(draft)]) == 0
    (tmp_path / "p.txt").write_text("Once upon a time, there was a little girl named Lily.\nTom and Sue were playing.\n")
    opts = BenchOptions(base="stories260K", draft=str(draft), questions=[str(tmp_path / "p.txt")],
                        methods=["vanilla", "eagle", "eagle-nolookup", "lookup"], max_new_tokens=96, repeats=1,
                        tree="chain", depth=2, lookup=8, output=str(tmp_path / "out"))
    assert run_benchmark(opts, log=lambda *_: None) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["tree"]["lookup"] == 8
    overall = data["overall"]
    assert overall["eagle"]["lookup_share"] > 0.3  # an untrained draft: the lookup proposes most accepted tokens
    assert overall["eagle-nolookup"]["lookup_share"] is None
    assert overall["eagle"]["tau"] > overall["eagle-nolookup"]["tau"]
    assert overall["lookup"]["lookup_share"] == 1.0 and overall["lookup"]["tau"] > 1.2  # no draft: all lookup
    assert all(c["counts"][EXACT] == 2 for c in data["exactness"].values())
    assert "came from the n-gram lookup alone" in (tmp_path / "out" / "report.md").read_text()

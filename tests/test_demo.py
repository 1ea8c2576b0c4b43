"""`eaglespec demo` end to end at toy scale: data is built once and cached, the draft is trained and
decodes exactly like vanilla greedy; the printed report has every item the issue asks for."""

from eaglespec.demo import DemoConfig, run_demo


def test_demo_small_and_cached(tmp_path, capsys):
    cfg = DemoConfig(cache_dir=tmp_path, num_stories=24, story_tokens=48, train_minutes=0.05, max_epochs=2,
                     max_new_tokens=16, prompts=("Once upon a time", "Tom had a ball."), colour=False)
    report = run_demo(cfg)
    out = capsys.readouterr().out
    assert report.comparison.all_identical
    assert (report.draft_dir / "model.safetensors").is_file()
    for item in ("self-distillation: sampling 24 stories", "training an EAGLE-3 head", "tau", "tok/s",
                 "vanilla", "identical to vanilla greedy: yes", "held-out accuracy per TTT position"):
        assert item in out, item
    assert "[" in out  # draft-accepted spans are marked (brackets without colour)
    # second run: the data comes from the cache, the draft is trained afresh
    again = run_demo(cfg)
    out = capsys.readouterr().out
    assert "self-distillation: sampling" not in out and "24 stories (cached in" in out
    assert again.comparison.all_identical

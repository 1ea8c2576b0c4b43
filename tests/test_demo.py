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


def test_chat_demo_marks_accepted_tokens_and_checks_exactness(tmp_path, capsys, monkeypatch):
    """`eaglespec demo --target T --draft D` on a chat model: stories260K with a small chat template and an
    untrained EAGLE-3 draft (fp32, so every answer must be identical to vanilla greedy)."""
    import json
    import shutil

    from eaglespec.models import bundled_model_path
    from eaglespec.cli import main
    from eaglespec.demo import run_chat_demo

    target = tmp_path / "stories-chat"
    shutil.copytree(bundled_model_path(), target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    assert main(["init-draft", "--base", str(target), "--method", "eagle3", "--output", str(tmp_path / "draft")]) == 0
    report = run_chat_demo(str(target), tmp_path / "draft", max_new_tokens=12,
                           prompts=("Once upon a time", "Tom had a ball."), colour=False, dtype="float32")
    out = capsys.readouterr().out
    assert len(report.results) == 2 and report.tau >= 1.0
    for item in ("> Once upon a time", "> Tom had a ball.", "tau", "speculative", "vanilla", "tok/s",
                 "identical to vanilla greedy: exact, exact"):
        assert item in out, item
    # the command, as the README runs it: `demo --target NAME` decodes with the draft committed for NAME
    from eaglespec.models import paths

    assets = tmp_path / "assets"
    monkeypatch.setattr(paths, "bundled_model_path", lambda: assets / "stories260K")
    monkeypatch.setitem(paths.COMMITTED_DRAFTS, str(target), "stories-chat-eagle3")
    shutil.copytree(tmp_path / "draft", assets / "drafts" / "stories-chat-eagle3")
    assert main(["demo", "--target", str(target), "--prompt", "Tom had a ball.", "--max-new-tokens", "8",
                 "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "stories-chat-eagle3" in out and "identical to vanilla greedy:" in out

"""`eaglespec export` / `eaglespec import` on the command line: the printed report, clear errors."""

from __future__ import annotations

from export_helpers import make_draft

from eaglespec.cli import main


def test_export_then_import_from_the_command_line(tmp_path, stories_dir, capsys):
    ours = make_draft(stories_dir, "eagle3", tmp_path / "ours", draft_vocab_size=100)
    assert main(["export", "--draft", str(ours), "--format", "sglang", "--target", str(stories_dir),
                 "--output", str(tmp_path / "sglang")]) == 0
    out = capsys.readouterr().out
    assert "sglang: wrote" in out and "midlayer.hidden_norm.weight [64] float32" in out and "none extra" in out
    assert "aux layer ids: vLLM top-level [1, 2, 4]" in out
    assert main(["import", "--format", "eagle", "--input", str(tmp_path / "sglang"), "--target", str(stories_dir),
                 "--output", str(tmp_path / "back")]) == 0
    assert "imported eagle eagle3 draft" in capsys.readouterr().out


def test_bad_input_is_a_clear_error(tmp_path, stories_dir, capsys):
    ours = make_draft(stories_dir, "eagle1", tmp_path / "ours")
    assert main(["export", "--draft", str(ours), "--format", "speculators", "--output", str(tmp_path / "x")]) == 1
    assert "speculators format holds EAGLE-3 drafts only" in capsys.readouterr().err
    assert main(["import", "--format", "eagle", "--input", str(tmp_path / "missing"), "--target", str(stories_dir),
                 "--output", str(tmp_path / "y")]) == 1
    assert "not a directory" in capsys.readouterr().err

"""`export --format gguf`: a tiny EAGLE-3 draft on a tiny random Llama with a byte-level BPE tokenizer, written
as llama.cpp's eagle3 GGUF and read back with gguf's GGUFReader (names, shapes, dtypes, metadata, values)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from export_helpers import make_draft

pytest.importorskip("gguf")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: gguf_writer
from gguf_writer import CHATML, small_tokenizer  # noqa: E402

from eaglespec.cli import main  # noqa: E402
from eaglespec.export.gguf_io import read_gguf  # noqa: E402
from eaglespec.export.llamacpp import export_gguf, rotary_rows_interleaved  # noqa: E402
from eaglespec.models import EagleDraftModel  # noqa: E402

PADDED_ROWS = 16  # the model's vocabulary is larger than the tokenizer's, as in many real models


def _save_target(directory, model_type="llama"):
    """A tiny 8-layer target (default aux ids [2, 4, 5]) with a byte-level BPE tokenizer and a ChatML template."""
    import transformers

    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=small_tokenizer(), bos_token="<|im_start|>",
                                               eos_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[model_type]
    config = cls(vocab_size=len(tok) + PADDED_ROWS, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                 eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bpe_target(tmp_path_factory):
    return _save_target(tmp_path_factory.mktemp("bpe-llama"))


@pytest.fixture(scope="module")
def draft(bpe_target, tmp_path_factory):
    return make_draft(bpe_target, "eagle3", tmp_path_factory.mktemp("d") / "draft", draft_vocab_size=100)


@pytest.fixture(scope="module")
def written(draft, bpe_target, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "draft.gguf"
    report = export_gguf(draft, path, bpe_target, dtype="f32")
    return path, report


def _tensor(path, name):
    from gguf import GGUFReader

    t = next(t for t in GGUFReader(str(path)).tensors if t.name == name)
    return np.asarray(t.data).reshape(tuple(int(n) for n in reversed(t.shape)))


def test_tensors_have_llama_cpp_names_shapes_and_dtypes(written):
    path, _ = written
    tensors = read_gguf(path).tensors
    assert sorted(tensors) == sorted([
        "token_embd.weight", "fc.weight", "output_norm.weight", "output.weight", "d2t", "blk.0.attn_norm.weight",
        "blk.0.attn_norm_2.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
        "blk.0.attn_output.weight", "blk.0.ffn_norm.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight"])
    assert tensors["fc.weight"].shape == (32, 96)  # 3 aux layers x 32 -> 32
    assert tensors["blk.0.attn_q.weight"].shape == (32, 64)  # input: [embedding ; fused hidden]
    assert tensors["blk.0.attn_k.weight"].shape == (16, 64)  # 2 kv heads x head_dim 8
    assert tensors["output.weight"].shape == (100, 32)  # the draft vocabulary
    assert tensors["d2t"].dtype == torch.int64 and tensors["d2t"].shape == (100,)


def test_metadata_is_what_llama_cpp_reads(written, bpe_target):
    path, _ = written
    meta = {k: m.value for k, m in read_gguf(path).metadata.items()}
    assert meta["general.architecture"] == "eagle3"
    assert meta["eagle3.target_layers"] == [2, 4, 5]  # layer inputs, llama.cpp's convention and ours
    assert read_gguf(path).metadata["eagle3.target_layers"].sub_type == "INT32"
    assert meta["eagle3.target_hidden_size"] == 32 and meta["eagle3.block_count"] == 1
    assert meta["eagle3.norm_before_residual"] is False and meta["eagle3.norm_before_fc"] is False
    assert meta["eagle3.attention.head_count"] == 4 and meta["eagle3.attention.head_count_kv"] == 2
    assert meta["eagle3.attention.key_length"] == 8 and meta["eagle3.context_length"] == 512
    assert meta["eagle3.vocab_size"] == len(meta["tokenizer.ggml.tokens"])
    assert meta["general.file_type"] == 0  # all F32


def test_tokenizer_is_the_targets(written, bpe_target):
    from transformers import AutoTokenizer

    path, _ = written
    meta = {k: m.value for k, m in read_gguf(path).metadata.items()}
    tok = AutoTokenizer.from_pretrained(str(bpe_target))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert tokens[:len(tok)] == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    assert tokens[len(tok):] == [f"[PAD{i}]" for i in range(len(tok), len(tok) + PADDED_ROWS)]
    assert types[:3] == [3, 3, 3] and types[3] == 1 and set(types[len(tok):]) == {5}  # control, normal, unused
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.merges"][0].count(" ") == 1
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.chat_template"] == CHATML and meta["tokenizer.ggml.add_bos_token"] is False


def test_values_d2t_and_rotary_rows(written, draft):
    path, _ = written
    model = EagleDraftModel.from_pretrained(draft)
    d2t = _tensor(path, "d2t")
    assert np.array_equal(d2t, np.arange(100) + model.d2t.numpy())  # absolute target ids
    q = model.midlayer.self_attn.q_proj.weight.detach()
    assert np.array_equal(_tensor(path, "blk.0.attn_q.weight"), rotary_rows_interleaved(q, 4).numpy())
    assert not np.array_equal(_tensor(path, "blk.0.attn_q.weight"), q.numpy())
    assert np.array_equal(_tensor(path, "blk.0.attn_v.weight"), model.midlayer.self_attn.v_proj.weight.detach().numpy())
    assert np.array_equal(_tensor(path, "blk.0.attn_norm_2.weight"), model.midlayer.hidden_norm.weight.detach().numpy())


def test_rotary_rows_worked_example():
    w = torch.arange(8.0).reshape(8, 1)  # 2 heads of head_dim 4: rows (0, 1 | 2, 3), (4, 5 | 6, 7)
    assert rotary_rows_interleaved(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("dtype,ggml_file_type", [("bf16", 32), ("f16", 1)])
def test_half_dtypes_keep_norms_f32(draft, bpe_target, tmp_path, dtype, ggml_file_type):
    path = tmp_path / "d.gguf"
    export_gguf(draft, path, bpe_target, dtype=dtype)
    contents = read_gguf(path)
    half = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    assert contents.tensors["fc.weight"].dtype == half and contents.tensors["output.weight"].dtype == half
    assert contents.tensors["blk.0.ffn_norm.weight"].dtype == torch.float32
    assert contents.metadata["general.file_type"].value == ggml_file_type


def test_full_vocabulary_draft_has_no_d2t(bpe_target, tmp_path):
    draft = make_draft(bpe_target, "eagle3", tmp_path / "full")
    export_gguf(draft, tmp_path / "full.gguf", bpe_target)
    tensors = read_gguf(tmp_path / "full.gguf").tensors
    assert "d2t" not in tensors and tensors["output.weight"].shape[0] == len(
        read_gguf(tmp_path / "full.gguf").metadata["tokenizer.ggml.tokens"].value)


def test_refusals_name_the_reason(bpe_target, stories_dir, tmp_path):
    eagle1 = make_draft(bpe_target, "eagle1", tmp_path / "e1")
    with pytest.raises(ValueError, match="EAGLE-3 drafts only"):
        export_gguf(eagle1, tmp_path / "x.gguf", bpe_target)
    qwen2 = _save_target(tmp_path / "qwen2", "qwen2")
    with pytest.raises(ValueError, match="Qwen2ForCausalLM.*layer inputs"):
        export_gguf(make_draft(qwen2, "eagle3", tmp_path / "q"), tmp_path / "x.gguf", qwen2)
    with pytest.raises(ValueError, match="byte-level BPE"):  # stories260K has a SentencePiece tokenizer
        export_gguf(make_draft(stories_dir, "eagle3", tmp_path / "s"), tmp_path / "x.gguf", stories_dir)
    other = make_draft(stories_dir, "eagle3", tmp_path / "other")
    with pytest.raises(ValueError, match="vocab size"):
        export_gguf(other, tmp_path / "x.gguf", bpe_target)
    assert not (tmp_path / "x.gguf").exists()


def test_command_line(draft, bpe_target, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert main(["export", "--format", "gguf", "--draft", str(draft), "--target", str(bpe_target),
                 "--output", str(out), "--dtype", "bf16"]) == 0
    text = capsys.readouterr().out
    assert "gguf: wrote" in text and "eagle3.target_layers = [2, 4, 5]" in text and "checked: read back" in text
    assert main(["export", "--format", "gguf", "--draft", str(draft), "--target", str(bpe_target),
                 "--output", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["export", "--format", "gguf", "--draft", str(draft), "--output", str(out), "--overwrite"]) == 1
    assert "needs --target" in capsys.readouterr().err


def test_read_back_check_names_what_differs(written, draft):
    from eaglespec.export.gguf_io import check_gguf
    from eaglespec.export.gguf_vocab import MetaValue

    path, report = written
    metadata = dict(report.metadata, **{"eagle3.target_layers": MetaValue([1, 4, 5], "ARRAY", "INT32")})
    with pytest.raises(ValueError, match=r"eagle3.target_layers: \[2, 4, 5\], expected \[1, 4, 5\]"):
        check_gguf(path, metadata, {s.name: s for s in report.tensors})
    specs = {s.name: s for s in report.tensors if s.name != "d2t"}
    with pytest.raises(ValueError, match="unexpected tensors: d2t"):
        check_gguf(path, report.metadata, specs)


# ---------------------------------------------------------------------------------------------------------------
# DFlash: llama.cpp's dflash architecture (export/gguf_dflash.py)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dflash_written(bpe_target, tmp_path_factory):
    from eaglespec.models import DFlashShape

    folder = tmp_path_factory.mktemp("dflash")
    draft = make_draft(bpe_target, "dflash", folder / "draft", dflash=DFlashShape(num_layers=2, block_size=4))
    return draft, export_gguf(draft, folder / "draft.gguf", bpe_target, dtype="f32")


def test_a_dflash_draft_is_written_as_llama_cpp_dflash(dflash_written, bpe_target):
    from eaglespec.models import DraftConfig

    draft, report = dflash_written
    config = DraftConfig.load(draft)
    contents = read_gguf(report.output)
    layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm",
             "ffn_gate", "ffn_up", "ffn_down"]
    assert sorted(contents.tensors) == sorted(["fc.weight", "enc.output_norm.weight", "output_norm.weight"]
                                              + [f"blk.{i}.{n}.weight" for i in range(2) for n in layer])
    assert contents.tensors["fc.weight"].shape == (32, 64)  # 2 target layers x 32 -> 32
    assert contents.tensors["blk.1.attn_k_norm.weight"].shape == (8,)  # per head
    meta = {k: m.value for k, m in contents.metadata.items()}
    assert meta["general.architecture"] == "dflash" and meta["dflash.block_count"] == 2
    assert meta["dflash.block_size"] == 4 and meta["tokenizer.ggml.mask_token_id"] == config.mask_token_id
    assert meta["dflash.target_layers"] == config.aux_layer_ids  # layer inputs: ours, unchanged
    assert contents.metadata["dflash.target_layers"].sub_type == "INT32"
    assert meta["dflash.embedding_length"] == 32 and meta["dflash.attention.head_count_kv"] == 2
    assert meta["tokenizer.ggml.model"] == "gpt2" and "dflash.vocab_size" not in meta  # as llama.cpp's converter


def test_dflash_values_are_ours_without_rotary_reordering(dflash_written):
    from eaglespec.models.dflash import DFlashDraftModel

    draft, report = dflash_written
    model = DFlashDraftModel.from_pretrained(draft)
    attn = model.layers[1].self_attn
    for theirs, ours in (("blk.1.attn_q.weight", attn.q_proj), ("blk.1.attn_k.weight", attn.k_proj),
                         ("blk.1.attn_q_norm.weight", attn.q_norm), ("enc.output_norm.weight", model.hidden_norm),
                         ("fc.weight", model.fc)):
        assert np.array_equal(_tensor(report.output, theirs), ours.weight.detach().numpy()), theirs


def test_dflash_gguf_refusals(bpe_target, tmp_path):
    from eaglespec.models import DFlashShape

    draft = make_draft(bpe_target, "dflash", tmp_path / "d", dflash=DFlashShape(block_size=4))
    with pytest.raises(ValueError, match="carries the target's tokenizer"):
        export_gguf(draft, tmp_path / "x.gguf", None)
    qwen2 = _save_target(tmp_path / "qwen2", "qwen2")
    with pytest.raises(ValueError, match="Qwen2ForCausalLM.*layer inputs a dflash draft"):
        export_gguf(make_draft(qwen2, "dflash", tmp_path / "q", dflash=DFlashShape(block_size=4)),
                    tmp_path / "x.gguf", qwen2)
    assert not (tmp_path / "x.gguf").exists()

"""A small GGUF as llama.cpp's converter writes one (rotary-permuted q/k, Q8_0 blocks, a byte-level BPE
vocabulary, a ChatML template), written with the `gguf` package from a tiny Llama built here."""

import json

import gguf
import numpy as np
import torch

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXT = "The capital of France is Paris. Paris is a city in France, and the capital is a city. " * 20


def small_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style, as SmolLM2's) trained here on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    return tok


def tiny_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's GGUF layout of q/k rows: the rotate-half pairs (i, i + d/2) interleaved as (2i, 2i+1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _gguf_tensors(model) -> dict[str, tuple[np.ndarray, str]]:
    """GGUF name -> (array as llama.cpp writes it, HF name); matrices are Q8_0-quantized like a real file."""
    c = model.config
    out = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: GGUF has no output.weight
        w = p.float().numpy()
        if name.startswith("model.layers."):
            layer, rest = name[len("model.layers."):].split(".", 1)
            module = rest.rsplit(".", 1)[0]
            if module == "self_attn.q_proj":
                w = _permute(w, c.num_attention_heads)
            elif module == "self_attn.k_proj":
                w = _permute(w, c.num_key_value_heads)
            gname = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[name]
        out[gname] = (w, name)
    return out


Q8_0 = gguf.GGMLQuantizationType.Q8_0


def _q8(array: np.ndarray) -> np.ndarray:
    return gguf.quants.quantize(array, Q8_0)


def write_gguf(path, model, tok) -> dict[str, torch.Tensor]:
    """Write `model` + `tok` as a llama GGUF; return the HF tensors the file de-quantizes to."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    merges = [" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.token_to_id("<|im_start|>"))
    w.add_eos_token_id(tok.token_to_id("<|im_end|>"))
    w.add_chat_template(CHATML)
    expected = {}
    for gname, (array, hf_name) in _gguf_tensors(model).items():
        original = model.state_dict()[hf_name].float().numpy()
        if array.ndim == 2 and gname != "token_embd.weight":
            w.add_tensor(gname, _q8(array), raw_dtype=Q8_0)
            # Q8_0 blocks run along a row and the permutation moves whole rows: the HF tensor expected
            # back is the de-quantized original in HF order
            original = gguf.quants.dequantize(_q8(original), Q8_0)
        else:
            w.add_tensor(gname, array)
        expected[hf_name] = torch.from_numpy(np.ascontiguousarray(original))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected

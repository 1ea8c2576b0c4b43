"""regenerate_speed.sh's data and arithmetic.
    regenerate_speed_data.py TRAIN_DIR OUT.jsonl        the 64 chats (OpenAI {"id", "messages"} records)
    regenerate_speed_data.py --count OUT.jsonl T0 T1 LOAD COMMIT CONFIG   records/s and new tokens/s of one run
                                                         (answer tokens counted with SmolLM2's tokenizer), as JSON
    regenerate_speed_data.py --compare A.jsonl B.jsonl   how many answers are identical"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PER_SOURCE = 16


def _chat(id: str, question: str, answer: str) -> dict:
    return {"id": id, "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def make_chats(train: Path) -> list[dict]:
    out = []
    for i, line in enumerate((train / "gsm8k_train.jsonl").read_text().splitlines()[:PER_SOURCE]):
        r = json.loads(line)
        out.append(_chat(f"gsm8k-{i}", r["question"], r["answer"]))
    for i, line in enumerate((train / "dolly_open_qa_chinkara.jsonl").read_text().splitlines()[:PER_SOURCE]):
        question, answer = json.loads(line)["text"].split("### Assistant:", 1)
        out.append(_chat(f"dolly-{i}", question.replace("### Human:", "").strip(), answer.strip()))
    for i, r in enumerate(json.loads((train / "gpteacher_codegen_instruct.json").read_text())[:PER_SOURCE]):
        out.append(_chat(f"gpteacher-{i}", r["instruction"] + ("\n\n" + r["input"] if r["input"] else ""),
                         r["response"]))
    for i, r in enumerate(json.loads((train / "sharegpt_sample_50_longprompt.json").read_text())[:PER_SOURCE]):
        out.append(_chat(f"sharegpt-{i}", r["conversations"][0]["value"], r["conversations"][1]["value"]))
    return out


def answers(path: str) -> dict[str, str]:
    return {str(r["id"]): r["messages"][-1]["content"] for r in map(json.loads, Path(path).read_text().splitlines())}


def count(path: str, start: float, end: float, load: str, commit: str, config: str) -> str:
    import platform

    from transformers import AutoTokenizer

    from eaglespec.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"))
    texts = answers(path)
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts.values())
    seconds = end - start  # the whole command: process start and model load included
    return json.dumps({"run": Path(path).stem, "commit": commit, "batch_size max_new_tokens": config,
                       "load_at_start": float(load), "device": f"cpu ({platform.processor() or platform.machine()})",
                       "records": len(texts), "answer_tokens": tokens, "seconds": round(seconds, 1),
                       "records_per_s": round(len(texts) / seconds, 3), "new_tokens_per_s": round(tokens / seconds, 1)})


def compare(a: str, b: str) -> str:
    x, y = answers(a), answers(b)
    same = sum(x[k] == y.get(k) for k in x)
    return json.dumps({"compare": [Path(a).stem, Path(b).stem], "identical_answers": same, "of": len(x)})


if __name__ == "__main__":
    if sys.argv[1] == "--count":
        print(count(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:8]))
    elif sys.argv[1] == "--compare":
        print(compare(sys.argv[2], sys.argv[3]))
    else:
        chats = make_chats(Path(sys.argv[1]))
        Path(sys.argv[2]).write_text("".join(json.dumps(c) + "\n" for c in chats))
        print(f"{len(chats)} chats -> {sys.argv[2]}")

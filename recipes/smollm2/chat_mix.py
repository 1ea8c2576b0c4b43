"""Build the chat prompt mix that SmolLM2-135M-Instruct re-answers (self-distillation) for its EAGLE drafts.

Only training sets from ../shared/data/train/ are used, never MT-bench or any other benchmark prompt:
dolly open QA (CC BY-SA 3.0), GSM8K train (MIT), GPTeacher codegen (MIT), Open-Assistant trees
(Apache-2.0, the first root-to-leaf path of each tree), the ShareGPT sample (research only; first turn,
prompt cut to MAX_PROMPT_CHARS). The glaive tool-call demo is left out: SmolLM2's ChatML template renders
no tools, so its tool turns would be trained without the tool definitions they depend on.

Every record is ShareGPT {"id", "source", "conversations"}; the assistant values are the datasets' own
answers, which `eaglespec regenerate` replaces. Records are shuffled with a fixed seed and interleaved so that
any prefix of the file is a balanced mix (a regeneration stopped early still trains on every source).

    python recipes/smollm2/chat_mix.py --shared ../shared/data/train --output runs/smollm2/prompts.jsonl
    python recipes/smollm2/chat_mix.py --all --output runs/smollm2/prompts-all.jsonl   # every record (15.9k)

Ids are the record's source and index (dolly-17), so the --all mix holds every id of the capped one and a
regeneration of it resumes from the capped one's output.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PER_SOURCE = {"dolly": 1200, "gsm8k": 700, "codegen": 700, "oasst": 100, "sharegpt": 50}
MAX_PROMPT_CHARS = 2000  # ShareGPT prompts run to many thousand characters; a 135M model's draft needs answers
SEED = 0


def turns(user: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": user.strip()}, {"from": "gpt", "value": answer.strip() or "."}]


def dolly(root: Path):
    for i, line in enumerate((root / "dolly_open_qa_chinkara.jsonl").read_text().splitlines()):
        text = json.loads(line)["text"]
        if "### Assistant:" in text:
            q, a = text.split("### Assistant:", 1)
            yield f"dolly-{i}", turns(q.replace("### Human:", "", 1), a)


def gsm8k(root: Path):
    for i, line in enumerate((root / "gsm8k_train.jsonl").read_text().splitlines()):
        r = json.loads(line)
        yield f"gsm8k-{i}", turns(r["question"], r["answer"])


def codegen(root: Path):
    for i, r in enumerate(json.loads((root / "gpteacher_codegen_instruct.json").read_text())):
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input", "").strip() else "")
        yield f"codegen-{i}", turns(user, r["response"])


def oasst(root: Path):
    for i, line in enumerate((root / "oasst_en_100_tree.jsonl").read_text().splitlines()):
        node, conv = json.loads(line)["prompt"], []
        while node is not None:
            conv.append({"from": "human" if node["role"] == "prompter" else "gpt", "value": node["text"]})
            replies = [r for r in node.get("replies") or [] if not r.get("deleted")]
            node = replies[0] if replies else None
        if conv[-1]["from"] == "human":
            conv.append({"from": "gpt", "value": "."})
        yield f"oasst-{i}", conv[:6]


def sharegpt(root: Path):
    for i, r in enumerate(json.loads((root / "sharegpt_sample_50_longprompt.json").read_text())):
        conv = r["conversations"]
        if len(conv) >= 2 and conv[0]["from"] == "human":
            yield f"sharegpt-{i}", turns(conv[0]["value"][:MAX_PROMPT_CHARS], conv[1]["value"])


SOURCES = {"dolly": dolly, "gsm8k": gsm8k, "codegen": codegen, "oasst": oasst, "sharegpt": sharegpt}


def build(root: Path, every_record: bool = False) -> list[dict]:
    """The mix: PER_SOURCE records of each source (every record with `every_record`), interleaved."""
    rng = random.Random(SEED)
    lists = []
    for name, reader in SOURCES.items():
        items = [{"id": i, "source": name, "conversations": c} for i, c in reader(root)]
        rng.shuffle(items)
        lists.append(items if every_record else items[: PER_SOURCE[name]])
    # interleave proportionally: each record's key is its rank within its source / that source's size
    keyed = [((k + rng.random()) / len(items), r) for items in lists for k, r in enumerate(items)]
    return [r for _, r in sorted(keyed, key=lambda x: x[0])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="../shared/data/train")
    p.add_argument("--output", required=True)
    p.add_argument("--all", action="store_true", help=f"every record of each source instead of {PER_SOURCE}")
    args = p.parse_args()
    records = build(Path(args.shared), args.all)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(f"wrote {len(records)} records to {args.output}")


if __name__ == "__main__":
    main()

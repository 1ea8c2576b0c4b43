"""Benchmark question files -> `Question`s, and each question's prompt for a method's own history.

Schemas (detected per line, errors name the file, the line and the fields found):
- EAGLE / MT-bench `question.jsonl` and Spec-Bench: {"question_id"?, "category", "turns": [str, ...]} -> chat;
  turn k+1 is prompted with the method's own answers to turns 1..k, through the chat template.
- HumanEval `.jsonl(.gz)`: {"task_id", "prompt", "entry_point", ...} -> the prompt as a completion (code).
- HumanEval-infilling: {"task_id", "prompt", "suffix", "canonical_solution"} -> a FIM prompt built with the
  tokenizer's FIM tokens, exactly as `prepare` lays it out.
- FIM training records (`prepare --data-format fim`): {"prefix", "suffix", "middle"?} -> the same FIM prompt (held-out
  code for `tune --calibration`, say).
- plain text (a file whose first non-empty line is not JSON): one completion prompt per line.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("chat", "completion", "fim")
PLAIN_TEXT_TURN_SEPARATOR = "\n\n"  # turns of a chat question on a tokenizer without a chat template


@dataclass
class Question:
    id: str
    category: str
    kind: str  # chat | completion | fim
    turns: list[str]  # chat: user turns; completion: [prompt]; fim: [prefix]
    suffix: str = ""  # fim only
    source: str = ""  # file:line

    @property
    def num_turns(self) -> int:
        return len(self.turns)


@dataclass
class QuestionSet:
    questions: list[Question]
    files: list[str] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return sorted({q.category for q in self.questions})


def _open_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _question_of_record(record: dict, where: str, default_id: str, default_category: str) -> Question:
    """One JSON record -> Question, by schema; an unknown schema names the fields found."""
    qid = str(record.get("question_id", record.get("task_id", record.get("id", default_id))))
    if "turns" in record:
        turns = record["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
            raise ValueError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        return Question(qid, str(record.get("category", default_category)), "chat", list(turns), source=where)
    if "prompt" in record and "suffix" in record and "canonical_solution" in record:
        return Question(qid, str(record.get("category", "infilling")), "fim", [str(record["prompt"])],
                        suffix=str(record["suffix"]), source=where)
    if isinstance(record.get("prefix"), str) and isinstance(record.get("suffix"), str):
        return Question(qid, str(record.get("category", "infilling")), "fim", [record["prefix"]],
                        suffix=record["suffix"], source=where)
    if "prompt" in record and isinstance(record["prompt"], str):
        category = str(record.get("category", "humaneval" if "entry_point" in record else default_category))
        return Question(qid, category, "completion", [record["prompt"]], source=where)
    raise ValueError(f"{where}: unknown question schema: fields found {sorted(record)}; expected 'turns' "
                     "(MT-bench / Spec-Bench), 'prompt' (HumanEval / completion), 'prompt'+'suffix'+"
                     "'canonical_solution' (HumanEval-infilling) or 'prefix'+'suffix' (FIM data)")


def read_questions(path: str | os.PathLike) -> list[Question]:
    """All questions of one file (JSON Lines of a known schema, or plain text lines)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such question file")
    lines = _open_text(path).splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise ValueError(f"{path}: empty question file")
    stem = path.name.split(".")[0]
    if not first.lstrip().startswith("{"):
        return [Question(f"{stem}-{n}", stem, "completion", [line], source=f"{path}:{n}")
                for n, line in enumerate(lines, 1) if line.strip()]
    questions = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON: {e.msg}") from e
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        questions.append(_question_of_record(record, where, f"{stem}-{n}", stem))
    return questions


def load_question_set(paths: list[str], limit: int | None = None, every: int = 1,
                      first_turn_only: bool = False) -> QuestionSet:
    """Questions of every file in order; `every` keeps every n-th question per file, `limit` the first N per file."""
    out = []
    for path in paths:
        qs = read_questions(path)[::every]
        qs = qs[:limit] if limit else qs
        if first_turn_only:
            for q in qs:
                q.turns = q.turns[:1]
        out += qs
    ids = [q.id for q in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"question ids appear twice across the files: {duplicates[:5]}")
    return QuestionSet(out, [str(p) for p in paths])


# -------------------------------------------------------------------------------------------------
# Prompts
# -------------------------------------------------------------------------------------------------

def has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def prompt_ids(question: Question, turn: int, answers: list[str], tokenizer, fim=None) -> list[int]:
    """Token ids of turn `turn`'s prompt; `answers` = this method's own answers to the earlier turns."""
    if question.kind == "fim":
        from eaglespec.data.fim import fim_prompt_ids

        if fim is None:
            raise ValueError(f"{question.source}: a FIM question needs a tokenizer with FIM tokens")
        return list(fim_prompt_ids(tokenizer, question.turns[0], question.suffix, fim))
    if question.kind == "chat" and has_chat_template(tokenizer):
        messages = []
        for k in range(turn + 1):
            messages.append({"role": "user", "content": question.turns[k]})
            if k < turn:
                messages.append({"role": "assistant", "content": answers[k]})
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        return list(out["input_ids"])
    # completion prompts, and chat questions on a base model: plain text, turns joined with their answers
    parts = [x for k in range(turn) for x in (question.turns[k], answers[k])] + [question.turns[turn]]
    return list(tokenizer(PLAIN_TEXT_TURN_SEPARATOR.join(parts))["input_ids"])

"""Greedy outputs of `generate`, `generate --batch-size 5`, `serve` and `bench` on stories260K and SmolLM2,
written to one JSON file, so that a refactor can be shown to change no token (issue 33, acceptance 1).

    python benchmarks/behaviour_check.py record OUT.json [--models stories260K,smollm2-135m]
    python benchmarks/behaviour_check.py compare BEFORE.json AFTER.json

`record` runs the installed `eaglespec` (PYTHONPATH=/path/to/other/src runs another checkout's code) on 8
MT-bench first turns (stories260K: as plain text, with an untrained seeded draft; SmolLM2: as chat, with the
committed draft), 48 new tokens, fp32 and greedy. `compare` prints each difference and exits 1 if there is
any: token ids of every output, and per bench run tau and acceptance by depth (timings are not compared).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE.parent.parent / "shared" / "data" / "eval" / "eagle_mt_bench_question.jsonl"
NUM_PROMPTS = 8
NEW_TOKENS = 48
COMMITTED_DRAFT = {"smollm2-135m": "smollm2-135m-eagle3"}


def _run(args: list[str]) -> str:
    done = subprocess.run(["eaglespec", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"eaglespec {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _prompts(folder: Path) -> Path:
    lines = QUESTIONS.read_text(encoding="utf-8").splitlines()[:NUM_PROMPTS]
    path = folder / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": json.loads(x)["turns"][0]}) for x in lines) + "\n")
    return path


def _draft(base: str, folder: Path) -> str:
    if base in COMMITTED_DRAFT:
        return COMMITTED_DRAFT[base]
    _run(["init-draft", "--base", base, "--method", "eagle3", "--output", str(folder / "draft"), "--seed", "0"])
    return str(folder / "draft")


def _generate(base: str, draft: str, prompts: Path, chat: bool, batch: int) -> list[list[int]]:
    args = ["generate", "--base", base, "--draft", draft, "--input", str(prompts), "--json",
            "--max-new-tokens", str(NEW_TOKENS), "--batch-size", str(batch)] + (["--chat"] if chat else [])
    return [json.loads(line)["token_ids"] for line in _run(args).splitlines() if line.startswith("{")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"POST {path} {body}: HTTP {e.code}: {e.read().decode()[:2000]}") from e


def _wait_healthy(port: int, server: subprocess.Popen) -> None:
    for _ in range(600):
        if server.poll() is not None:
            raise SystemExit(f"eaglespec serve exited with {server.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("eaglespec serve did not become healthy in 300 s")


def _serve(base: str, draft: str, prompts: Path, chat: bool) -> list[str]:
    port = _free_port()
    server = subprocess.Popen(["eaglespec", "serve", "--base", base, "--draft", draft, "--port", str(port),
                               "--served-model-name", "m"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(port, server)
        texts = []
        for line in prompts.read_text().splitlines():
            prompt = json.loads(line)["prompt"]
            if chat:
                body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": NEW_TOKENS,
                        "temperature": 0, "model": "m"}
                texts.append(_post(port, "/v1/chat/completions", body)["choices"][0]["message"]["content"])
            else:
                body = {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "model": "m"}
                texts.append(_post(port, "/v1/completions", body)["choices"][0]["text"])
        return texts
    finally:
        server.terminate()
        server.wait(timeout=60)


def _bench(base: str, draft: str, folder: Path) -> dict:
    out = folder / "bench"
    _run(["bench", "--base", base, "--draft", draft, "--questions", str(QUESTIONS), "--limit", str(NUM_PROMPTS),
          "--first-turn-only", "--methods", "vanilla,eagle,eagle-chain", "--max-new-tokens", str(NEW_TOKENS),
          "--repeats", "1", "--output", str(out)])
    results = json.loads((out / "results.json").read_text())  # bench writes it uncompressed
    runs = {f"{r['question_id']}/{r['method']}": r["turns"] for r in results["runs"]}
    overall = {m: {"tau": v["tau"], "acceptance_by_depth": v["acceptance_by_depth"]}
               for m, v in results["overall"].items()}
    return {"runs": runs, "overall": overall}


def record(path: str, models: list[str]) -> None:
    result = {}
    for base in models:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            prompts, draft, chat = _prompts(folder), _draft(base, folder), base != "stories260K"
            result[base] = {"generate": _generate(base, draft, prompts, chat, 1),
                            "generate_batch5": _generate(base, draft, prompts, chat, 5),
                            "serve": _serve(base, draft, prompts, chat),
                            "bench": _bench(base, draft, folder)}
            print(f"{base}: recorded", file=sys.stderr)
    Path(path).write_text(json.dumps(result, indent=1))


def _differences(before, after, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [d for k in keys for d in _differences(before.get(k), after.get(k), f"{where}/{k}")]
    if isinstance(before, float) and isinstance(after, float):
        return [] if abs(before - after) < 1e-9 else [f"{where}: {before} -> {after}"]
    return [] if before == after else [f"{where}: differs"]


def compare(before: str, after: str) -> int:
    differences = _differences(json.loads(Path(before).read_text()), json.loads(Path(after).read_text()))
    for line in differences:
        print(line)
    print(f"{len(differences)} differences" if differences else "identical: every token, tau and acceptance")
    return 1 if differences else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("output")
    r.add_argument("--models", default="stories260K,smollm2-135m")
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    args = p.parse_args()
    if args.command == "record":
        record(args.output, args.models.split(","))
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

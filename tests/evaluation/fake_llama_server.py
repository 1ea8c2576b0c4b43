"""A stand-in for llama.cpp's llama-server (same flags, /health, /completion, /infill and /metrics) for the lifecycle
tests.

FAKE_LLAMA_MODE: "ok" (answers: the prompt's last id repeated n_predict times, and on /infill the lengths of the
prefix and the suffix, then 0s up to n_predict, with the request's fields echoed under "infill"; when -md is given, one verification
step per request that accepted 2 of 3 draft tokens, counted in /metrics as llama.cpp counts them, and a drafter
statistics line in the log as llama.cpp writes it at -lv 4), "crash" (prints an error and exits 1 before listening),
"die" (exits after one completion).
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

MODE = os.environ.get("FAKE_LLAMA_MODE", "ok")


COUNTERS = {"steps": 0}
METRICS = """# HELP llamacpp:spec_decode_num_drafts_total Speculative: Total speculative decoding verification steps
# TYPE llamacpp:spec_decode_num_drafts_total counter
llamacpp:spec_decode_num_drafts_total {steps}
# HELP llamacpp:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per draft position
# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{{position="0"}} {steps}
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{{position="1"}} {steps}
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{{position="2"}} 0
"""
STATS = ("0.01.000.000 I spec common_specu: statistics     draft-eagle3: #calls(b,g,a) =    1 {steps:6d} {steps:6d}, "
         "#gen drafts = 0, #acc drafts = 0, #gen tokens = 0, #acc tokens = 0, dur(b,g,a) = 0.003, {ms:.3f}, 0.100 ms")


def reply(body: dict, drafting: bool) -> dict:
    if "input_prefix" in body:  # /infill: llama.cpp builds the FIM prompt itself
        tokens = ([len(body["input_prefix"]), len(body["input_suffix"])] + [0] * body["n_predict"])[:body["n_predict"]]
        body = {**body, "prompt": [0] * 3}
    else:
        tokens = [body["prompt"][-1]] * body["n_predict"]
    timings = {"prompt_n": len(body["prompt"]), "prompt_ms": 1.0, "predicted_n": len(tokens), "predicted_ms": 2.0}
    if drafting:
        timings.update(draft_n=3, draft_n_accepted=2)
        COUNTERS["steps"] += 1
        print(STATS.format(steps=COUNTERS["steps"], ms=4.0 * COUNTERS["steps"]), flush=True)
    return {"tokens": tokens, "stop_type": "limit", "timings": timings}


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("-m")  # declared, or argparse reads "-m target.gguf" as an abbreviation of -md
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("-md", default=None)
    args, _ = p.parse_known_args()
    if MODE == "crash":
        print("error: failed to load model 'x.gguf'", flush=True)
        sys.exit(1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            if self.path == "/metrics":
                self.wfile.write(METRICS.format(**COUNTERS).encode())
            else:
                self.wfile.write(b'{"status": "ok"}')

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if MODE == "die":
                print("GGML_ASSERT failed", flush=True)
                os._exit(134)
            data = json.dumps(reply(body, args.md is not None)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    print(f"listening on {args.host}:{args.port}", flush=True)
    HTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()

"""A stand-in for llama.cpp's llama-server (same flags, /health and /completion) for the lifecycle tests.

FAKE_LLAMA_MODE: "ok" (answers: the prompt's last id repeated n_predict times, 2 of 3 "draft" tokens accepted
when -md is given), "crash" (prints an error and exits 1 before listening), "die" (exits after one completion).
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

MODE = os.environ.get("FAKE_LLAMA_MODE", "ok")


def reply(body: dict, drafting: bool) -> dict:
    tokens = [body["prompt"][-1]] * body["n_predict"]
    timings = {"prompt_n": len(body["prompt"]), "prompt_ms": 1.0, "predicted_n": len(tokens), "predicted_ms": 2.0}
    if drafting:
        timings.update(draft_n=3, draft_n_accepted=2)
    return {"tokens": tokens, "stop_type": "limit", "timings": timings}


def main() -> None:
    p = argparse.ArgumentParser()
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

"""Run under torchrun by test_distributed.py: `eaglespec train ...` in this rank, then record what
the test checks into OUT_DIR/rank{R}.json: a hash of this rank's trainable draft weights and, right
after the engine is built, the size of this rank's share of each trainable parameter (ZeRO-3 keeps
only a partition per rank).

usage: python dist_worker.py OUT_DIR -- <eaglespec arguments>
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

import eaglespec.training.run as run_module
from eaglespec.cli import main


def _shares(engine) -> dict:
    """Per trainable parameter: elements held by this rank and the full size (ds_numel under ZeRO-3)."""
    out = {}
    for name, p in engine.model.named_parameters():
        if p.requires_grad:
            local = p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
            out[name] = {"local": int(local), "full": int(getattr(p, "ds_numel", p.numel()))}
    return out


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(out_dir: Path, argv: list[str]) -> int:
    record: dict = {"rank": int(os.environ.get("RANK", "0"))}
    # Keep the draft, not the engine: a DDP / DeepSpeed engine alive after the run would keep the process
    # group alive past destroy_process_group (see training.distributed.destroy_distributed).
    drafts = []
    make_engine = run_module.make_engine

    def recording_make_engine(*args, **kwargs):
        engine = make_engine(*args, **kwargs)
        record["shares"] = _shares(engine)
        if not getattr(engine, "zero3", False):  # ZeRO-3 weights are partitioned: not hashable locally
            drafts.append(engine.model)
        return engine

    run_module.make_engine = recording_make_engine
    rc = main(argv)
    record["rc"] = rc
    if drafts:
        record["weights_sha256"] = _weights_hash(drafts[0])
    (out_dir / f"rank{record['rank']}.json").write_text(json.dumps(record))
    return rc


if __name__ == "__main__":
    sep = sys.argv.index("--")
    sys.exit(run(Path(sys.argv[1]), sys.argv[sep + 1 :]))

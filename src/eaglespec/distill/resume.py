"""Resumable JSON Lines output: records are appended with ONE write of complete lines and fsync'ed, so the file
is valid JSONL at every moment except, after a crash mid-write, a partial last line; a rerun truncates that line
and skips the ids already written."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def finished_ids(path: str | os.PathLike) -> list[str]:
    """Ids already in an existing output; a partial last line (from a killed run) is truncated first."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run",
                       path, len(data) - complete)
        with open(path, "r+b") as f:
            f.truncate(complete)
            os.fsync(f.fileno())
    ids = []
    for line_no, line in enumerate(data[:complete].decode("utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            ids.append(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{line_no}: existing output line is not a record with an 'id' ({e}); "
                             "is this file the output of another tool? Move it away or pick another --output") from e
    return ids


def append_records(path: str | os.PathLike, records: list[dict]) -> None:
    """Append complete JSON lines with a single write, then fsync."""
    if not records:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, pipes); regular files write it all
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def ids_still_to_do(ids: list[str], output: str | os.PathLike) -> tuple[set[str], int]:
    """Repair `output` (partial last line) -> (the ids of `ids` not written yet, how many are written). An output
    holding ids this run does not have is another run's: refused, nothing is touched beyond the repair."""
    done = set(finished_ids(output))
    unknown = done - set(ids)
    if unknown:
        raise ValueError(f"{output}: holds {len(unknown)} ids that are not in this run's input "
                         f"(e.g. {sorted(unknown)[:3]}); it is another run's output. Pick another --output")
    return set(ids) - done, len(done)

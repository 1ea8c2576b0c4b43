"""`eaglespec doctor`: what is installed, what the hardware can do, and whether the bundled model runs."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="stories260K", help="model for the one-token forward check")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_bf16() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return "yes (native AVX-512/AMX bf16)"
    import torch

    try:  # works everywhere, slower without native support
        torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
        return "emulated (no native bf16 instructions; bf16 works but fp32 may be faster)"
    except RuntimeError as e:
        return f"no ({e})"


def collect() -> tuple[list[tuple[str, str]], list[str]]:
    """Return (rows of name/value, problems). Problems make doctor exit non-zero."""
    rows: list[tuple[str, str]] = [("python", f"{platform.python_version()} ({sys.executable})")]
    problems: list[str] = []
    if sys.version_info < (3, 10):
        problems.append("Python >= 3.10 is required")
    try:
        import torch
    except ImportError:
        return rows + [("torch", "NOT INSTALLED")], ["install torch: pip install torch==2.13.0 (CPU) or a CUDA build"]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    rows.append(("torch", f"{torch.__version__} ({build})"))
    rows.append(("cuda available", str(torch.cuda.is_available())))
    rows.append(("cuda version", torch.version.cuda or "none"))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows.append(("cuda devices", str(count)))
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        rows.append((f"  gpu {i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
    for dist, extra in (("transformers", None), ("datasets", None), ("safetensors", None),
                        ("sentencepiece", None), ("deepspeed", "deepspeed")):
        v = _version(dist)
        if v is None:
            rows.append((dist, f"not installed (pip install 'eaglespec[{extra}]')" if extra else "NOT INSTALLED"))
            if extra is None:
                problems.append(f"install {dist}: pip install {dist}")
        else:
            rows.append((dist, v))
    tf = _version("transformers")
    if tf:
        from eaglespec.models.target import MIN_TRANSFORMERS, transformers_too_old

        if transformers_too_old(tf):
            problems.append(f"transformers {tf} is too old (decoding passes `cache=`, so named since "
                            f"{MIN_TRANSFORMERS}): pip install 'transformers>={MIN_TRANSFORMERS},<6'")
    rows.append(("cpu bf16", _cpu_bf16()))
    rows.append(("cpu threads", str(torch.get_num_threads())))
    return rows, problems


def _forward_check(model: str) -> str:
    import torch

    from eaglespec.models import resolve_model_path
    from eaglespec.models import TargetModel

    target = TargetModel.from_pretrained(resolve_model_path(model), dtype=torch.float32)
    out = target(torch.tensor([[target.model.config.bos_token_id or 1]]))
    if not torch.isfinite(out.logits).all():
        raise ValueError("the forward produced non-finite logits")
    n = sum(p.numel() for p in target.model.parameters())
    return f"ok ({model}: {n:,} parameters, logits {tuple(out.logits.shape)})"


def run(args: argparse.Namespace) -> int:
    rows, problems = collect()
    if not problems:
        try:
            rows.append(("one-token forward", _forward_check(args.model)))
        except Exception as e:  # report, do not crash: doctor's job is to say what is wrong
            rows.append(("one-token forward", f"FAILED: {type(e).__name__}: {e}"))
            problems.append(f"the bundled model forward failed ({e}); reinstall eaglespec")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print("all required pieces work" if not problems else f"{len(problems)} problem(s) found")
    return 0 if not problems else 1

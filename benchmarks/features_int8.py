"""What 8-bit storage of EAGLE-3 features costs (issue 35's 40 GB feature budget), measured before it was built
(now `dump-features --aux-int8`).

Rounding as the storage would: per token and group of 64 channels, absmax int8.

    # 1. the target's own distribution from rounded last hidden states, against the stored bf16 ones
    python benchmarks/features_int8.py agreement runs/smollm2/features-sampled3 [--chats 40] [--group 64]
    # 2. `eaglespec train eagle3 ...` reading the aux features rounded (q8) or as stored (bf16)
    python benchmarks/features_int8.py train q8 --basepath smollm2-135m --features DIR --savedir OUT ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from eaglespec.data.features import INT8_GROUP as GROUP
from eaglespec.data.features import dequantize_int8, quantize_int8


def rounded(x: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """x [T, C] as `dump-features --aux-int8` stores it (int8, a scale per token and group), back in x's dtype."""
    return dequantize_int8(*quantize_int8(x, group), x.dtype)


def agreement(features: Path, chats: int, group: int) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from eaglespec.models import resolve_model_path

    head = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"), dtype=torch.bfloat16).lm_head
    shard = safe_open(str(sorted(features.glob("shard_*.safetensors"))[0]), "pt")
    ids = sorted({k.split(".")[0] for k in shard.keys()}, key=int)[:chats]
    same = kl = tokens = 0
    errors = {"aux_hidden": [], "last_hidden": []}
    for i in ids:
        mask = shard.get_tensor(f"{i}.loss_mask").bool()
        for name in errors:
            x = shard.get_tensor(f"{i}.{name}")
            errors[name].append(float((rounded(x, group).float() - x.float()).norm() / x.float().norm()))
        last = shard.get_tensor(f"{i}.last_hidden")[mask]
        with torch.no_grad():
            ref, new = head(last).float(), head(rounded(last, group)).float()
        same += int((ref.argmax(-1) == new.argmax(-1)).sum())
        kl += float(torch.nn.functional.kl_div(new.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                               reduction="sum"))
        tokens += int(mask.sum())
    print(f"{len(ids)} chats, {tokens} trained tokens, groups of {group}: target argmax unchanged at "
          f"{100 * same / tokens:.2f}%, mean KL {kl / tokens:.2e}; relative L2 error aux "
          f"{sum(errors['aux_hidden']) / len(ids):.4f}, last {sum(errors['last_hidden']) / len(ids):.4f}")


def train(mode: str, args: list[str]) -> int:
    from eaglespec.cli import main
    from eaglespec.data import features

    if mode == "q8":
        stored = features.FeatureDataset.__getitem__

        def read_rounded(self, index):
            item = stored(self, index)
            item["aux_hidden"] = rounded(item["aux_hidden"])
            return item

        features.FeatureDataset.__getitem__ = read_rounded
    return main(["train", "eagle3", *args])


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        sys.exit(train(sys.argv[2], sys.argv[3:]))
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("agreement",))
    p.add_argument("features", type=Path)
    p.add_argument("--chats", type=int, default=40)
    p.add_argument("--group", type=int, default=GROUP)
    a = p.parse_args()
    torch.set_num_threads(1)
    agreement(a.features, a.chats, a.group)

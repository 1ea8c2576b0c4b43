"""Run inside the eagle-llm environment (the reference EAGLE's own package, EAGLE-1 modules):

    python reference_check.py WORKDIR
WORKDIR holds inputs.pt (features [1, T, H], ids [1, T]) and ours-eagle/ (our `eagle` export). This loads our
export into the reference's own `cnets.Model` with strict=True and runs its forward; it also writes a checkpoint
from a freshly initialised reference `Model` (reference-ckpt/: pytorch_model.bin + config.json, as its trainers
save one) and runs that one's forward. Both outputs go to result.pt.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def reference_model(config_dir: Path, bias: bool, seed: int):
    from eagle.model.cnets import Model
    from eagle.model.configs import EConfig

    torch.manual_seed(seed)
    return Model(EConfig.from_pretrained(str(config_dir)), bias=bias).eval()


def main(work: Path) -> None:
    inputs = torch.load(work / "inputs.pt")
    ours_dir = work / "ours-eagle"
    bias = json.loads((ours_dir / "config.json").read_text()).get("bias", True)
    ref = reference_model(ours_dir, bias, seed=0)
    ref.load_state_dict(load_file(str(ours_dir / "model.safetensors")), strict=True)  # names and shapes exactly
    fresh = reference_model(ours_dir, True, seed=1)
    out_dir = work / "reference-ckpt"
    out_dir.mkdir()
    torch.save(fresh.state_dict(), out_dir / "pytorch_model.bin")
    config = json.loads((ours_dir / "config.json").read_text())
    (out_dir / "config.json").write_text(json.dumps({**config, "bias": True}))
    with torch.no_grad():
        result = {"ours_in_reference": ref(inputs["features"], inputs["ids"]),
                  "reference_ckpt": fresh(inputs["features"], inputs["ids"])}
    torch.save(result, work / "result.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

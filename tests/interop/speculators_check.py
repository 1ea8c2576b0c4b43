"""Run inside the speculators environment (not eaglespec's): load our speculators export with speculators'
own from_pretrained and forward, and convert our sglang export with speculators' own converter.

    python speculators_check.py WORKDIR
WORKDIR holds inputs.pt (aux features, ids, positions, steps, target path, aux ids), speculators/ and sglang/;
this writes result.pt: speculators' draft tokens per TTT step, its aux ids, and the converter's output tensors.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def draft_tokens(work: Path, inputs: dict) -> dict:
    from speculators.models.eagle3 import Eagle3SpeculatorConfig
    from speculators.models.eagle3.core import Eagle3DraftModel

    config = Eagle3SpeculatorConfig.from_pretrained(str(work / "speculators"))
    config.transformer_layer_config._attn_implementation = "eager"  # flex attention needs longer sequences
    model = Eagle3DraftModel.from_pretrained(str(work / "speculators"), config=config).eval()
    with torch.no_grad():
        tokens = model(hidden_states=inputs["aux"], input_ids=inputs["ids"], document_ids=torch.zeros_like(inputs["ids"]),
                       position_ids=inputs["positions"], ttt_steps=inputs["steps"])
    return {"draft_tokens": torch.stack(tokens, dim=-1), "aux_ids": list(model.target_layer_ids)}


def convert(work: Path, inputs: dict) -> dict:
    from speculators.convert.eagle.eagle3_converter import Eagle3Converter

    Eagle3Converter().convert(work / "sglang", work / "converted", base_model=inputs["target"], validate=True,
                              eagle_aux_hidden_state_layer_ids=inputs["aux_ids"])
    return {"converted": load_file(str(work / "converted" / "model.safetensors"))}


def main(work: Path) -> None:
    inputs = torch.load(work / "inputs.pt")
    torch.save({**draft_tokens(work, inputs), **convert(work, inputs)}, work / "result.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

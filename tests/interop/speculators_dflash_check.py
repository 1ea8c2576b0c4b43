"""Run inside the speculators environment (not eaglespec's): load our DFlash speculators export with speculators'
own from_pretrained and run its anchored-block forward (the one it trains with) at given anchors.

    python speculators_dflash_check.py WORKDIR
WORKDIR holds inputs.pt (target features, ids, the anchors) and speculators/; this writes result.pt: the draft's
logits for every block slot [anchors * block_size, V] and the layer ids it reads.
"""

import sys
from pathlib import Path

import torch


def block_logits(work: Path, inputs: dict) -> dict:
    from speculators.models.dflash import DFlashSpeculatorConfig
    from speculators.models.dflash.core import DFlashDraftModel

    config = DFlashSpeculatorConfig.from_pretrained(str(work / "speculators"))
    config.transformer_layer_config._attn_implementation = "eager"  # a dense float mask; flex needs compilation
    model = DFlashDraftModel.from_pretrained(str(work / "speculators"), config=config).eval()
    ids, anchors = inputs["ids"], inputs["anchors"]
    loss_mask = torch.zeros_like(ids)
    loss_mask[0, anchors] = 1  # exactly these positions are eligible, and all of them are drawn
    with torch.no_grad():
        _, logits, _, _, _ = model._backbone_forward(
            hidden_states=inputs["features"], input_ids=ids, loss_mask=loss_mask,
            verifier_last_hidden_states=torch.zeros(1, ids.shape[1], config.transformer_layer_config.hidden_size),
            document_ids=torch.zeros_like(ids), max_anchors=len(anchors))
    return {"logits": logits[0], "layer_ids": list(model.target_layer_ids), "block_size": model.block_size}


if __name__ == "__main__":
    work = Path(sys.argv[1])
    torch.save(block_logits(work, torch.load(work / "inputs.pt")), work / "result.pt")

"""Runs inside the pyreft/repeng environment (transformers 4.45.1): the reference side of
``benchmarks/reference_checks.py``. Reads a work directory written by jolalens, writes
``reference_out.safetensors`` there. Not importable from jolalens (another transformers).

Inputs (all pre-tokenised, so no tokenizer crosses the two transformers versions):
``spec.json`` (Llama config, LoReFT rows and windows, RePE pairs and control settings),
``model.safetensors`` (the HF weights), ``loreft.safetensors`` (R, W, b per layer).
"""

import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import BatchEncoding, LlamaConfig, LlamaForCausalLM


def load_model(work: Path, spec: dict) -> LlamaForCausalLM:
    config = LlamaConfig(**spec["config"])
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(load_file(str(work / "model.safetensors")), strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise SystemExit(f"weights do not fit the reference Llama: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.float().eval()


def run_loreft(model, spec: dict, work: Path, out: dict) -> None:
    import pyreft

    lo = spec["loreft"]
    d, r, n_layers = spec["config"]["hidden_size"], lo["rank"], spec["config"]["num_hidden_layers"]
    reps = [
        {
            "layer": layer,
            "component": "block_output",
            "low_rank_dimension": r,
            "intervention": pyreft.LoreftIntervention(embed_dim=d, low_rank_dimension=r, dtype=torch.float32),
        }
        for layer in range(n_layers)
    ]
    reft = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps))
    reft.set_device("cpu")
    params = load_file(str(work / "loreft.safetensors"))
    worst = 0.0
    for key, iv in reft.interventions.items():
        iv = iv[0] if isinstance(iv, tuple) else iv
        layer = int(re.match(r"layer_(\d+)_", key).group(1))
        site = f"blocks.{layer}.hook_resid_post"
        R = params[f"{site}.R"]
        iv.load_state_dict(
            {"weight": params[f"{site}.W"], "bias": params[f"{site}.b"], "rotate_layer": R.T.contiguous()}
        )
        worst = max(worst, float((iv.rotate_layer.weight.detach() - R.T).abs().max()))
    out["loreft_param_copy_max_abs"] = torch.tensor(worst)
    for i, (ids, locs) in enumerate(zip(lo["rows"], lo["locations"], strict=True)):
        base = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        with torch.no_grad():
            _, cf = reft(base, unit_locations={"sources->base": (None, [[locs]] * n_layers)})
        out[f"loreft_logits_{i}"] = cf.logits[0].float()


class PretokenisedTokenizer:
    """Stands in for a tokenizer in repeng: maps each key string to its given ids (right padding)."""

    def __init__(self, table: dict[str, list[int]], pad_id: int) -> None:
        self.table, self.pad_id = table, pad_id

    def __call__(self, batch, padding=True, return_tensors="pt"):
        rows = [self.table[s] for s in batch]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})


def run_repeng(model, spec: dict, out: dict) -> LlamaForCausalLM:
    from repeng import ControlModel, ControlVector, DatasetEntry

    rp = spec["repe"]
    table = {}
    dataset = []
    for i, (pos, neg) in enumerate(zip(rp["positive"], rp["negative"], strict=True)):
        table[f"p{i}"], table[f"n{i}"] = pos, neg
        dataset.append(DatasetEntry(positive=f"p{i}", negative=f"n{i}"))
    layers = rp["layers"]
    tok = PretokenisedTokenizer(table, rp["pad_id"])
    vector = ControlVector.train(
        model, tok, dataset, hidden_layers=layers, batch_size=rp["batch_size"], method="pca_diff"
    )
    for layer in layers:
        out[f"repeng_direction_{layer}"] = torch.tensor(vector.directions[layer])
    controlled = ControlModel(model, layers)
    controlled.set_control(vector, rp["strength"])
    with torch.no_grad():
        out["repeng_control_logits"] = controlled(input_ids=torch.tensor([rp["control_ids"]])).logits[0].float()
    return controlled.unwrap()


def main() -> None:
    work = Path(sys.argv[1])
    spec = json.loads((work / "spec.json").read_text())
    torch.manual_seed(0)
    model = load_model(work, spec)
    out: dict[str, torch.Tensor] = {}
    if "repe" in spec:  # before pyreft wraps the model
        model = run_repeng(model, spec, out)
    if "loreft" in spec:
        run_loreft(model, spec, work, out)
    save_file({k: v.contiguous() for k, v in out.items()}, str(work / "reference_out.safetensors"))


if __name__ == "__main__":
    main()

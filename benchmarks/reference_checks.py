"""LoReFT and RePE against their reference implementations (pyreft 0.1.0, repeng 0.4.0).

pyreft pins ``transformers==4.45.1`` (jolalens runs 5.x), so the references run in their own
virtual environment (``--build-env`` makes it; torch 2.13.0 CPU is installed first so no CUDA
wheels are fetched). Both sides get the same pre-tokenised inputs and the same weights:

* LoReFT: R, W, b of a freshly initialised jolalens edit are loaded into pyreft's
  ``LoreftIntervention`` (its own ``load_state_dict``) on every layer's ``block_output``; pyreft
  intervenes at the same first/last prompt positions (``unit_locations``); logits are compared.
* RePE: jolalens' reading (``center=True``, repeng's ``pca_diff``) vs ``ControlVector.train`` on
  the same (correct, wrong) pairs, on the layers where both read the same tensor (repeng's last
  layer is the final-normed state, so it is left out); then control logits with repeng's own
  vector loaded into a :class:`RepeEdit`, vs ``ControlModel.set_control``.

    python benchmarks/reference_checks.py --build-env            # once (~2 min, PyPI)
    python benchmarks/reference_checks.py --model tiny           # seconds
    python benchmarks/reference_checks.py --model embedded       # SmolLM2-135M, ~1 min on a CPU

Writes ``runs/reference/<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from jolalens import Example, hf_view
from jolalens.baselines.loreft import LoreftConfig, LoreftEdit
from jolalens.baselines.repe import RepeConfig, RepeEdit, reading_directions, residual_at_last_token
from jolalens.data import answer_mask, collate, tokenize_example
from jolalens.edit import Backend, answer_positions

__all__ = ["ENV", "build_env", "reference_python", "run_checks"]

log = logging.getLogger(__name__)
ENV = Path(os.environ.get("JOLALENS_REFERENCE_ENV", "/work/envs/pyreft"))
SIDE = Path(__file__).parent / "reference" / "reference_side.py"
# pyreft's full requirement list drags in jupyter, wandb, gcsfs...; the references need only these
PINS = [
    "transformers==4.45.1",
    "numpy<2",
    "huggingface-hub>=0.23.2,<1.0",
    "datasets>=2.18,<3",
    "pyarrow<18",
    "scikit-learn",
    "gguf",
    "tqdm",
    "protobuf",
    "sentencepiece",
    "accelerate",
    "matplotlib",
]


def build_env(path: Path = ENV) -> None:
    """Create the reference venv: torch 2.13.0 (CPU) first, then pyreft/pyvene/repeng without deps."""
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q"]
    constraints = path / "constraints.txt"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    constraints.write_text("torch==2.13.0\n")
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run(
        [*pip, "-c", str(constraints), "--no-deps", "pyreft==0.1.0", "pyvene==0.1.8", "repeng==0.4.0"], check=True
    )
    subprocess.run([*pip, "-c", str(constraints), *PINS], check=True)


def reference_python(path: Path = ENV) -> tuple[Path | None, str]:
    """The reference env's python, or ``None`` and why it cannot be used."""
    python = path / "bin" / "python"
    if not python.is_file():
        return None, f"no reference env at {path} (build it: python benchmarks/reference_checks.py --build-env)"
    probe = subprocess.run(
        [str(python), "-c", "import pyreft, repeng, transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        return None, f"{path} cannot import pyreft and repeng: {probe.stderr.strip().splitlines()[-1:]}"
    return python, f"transformers {probe.stdout.strip().splitlines()[-1]}"


def _llama_config(view: Any) -> dict[str, Any]:
    """A transformers-4.45 ``LlamaConfig`` for the view's weights (5.x moved rope_theta)."""
    c = view.config
    rope = getattr(c, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope type {rope.get('rope_type')} is not mapped to transformers 4.45 here")
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": bool(c.tie_word_embeddings),
        "hidden_act": c.hidden_act,
        "attention_bias": bool(getattr(c, "attention_bias", False)),
        "mlp_bias": bool(getattr(c, "mlp_bias", False)),
    }


def _windows(prompt_len: int, first_n: int, last_n: int) -> list[int]:
    k_first, k_last = min(first_n, prompt_len // 2), min(last_n, prompt_len // 2)
    return list(range(k_first)) + list(range(prompt_len - k_last, prompt_len))


def _examples(model_name: str) -> list[Example]:
    if model_name == "embedded":
        from jolalens.tasks import load_task_splits

        return list(load_task_splits("arc_easy", n_train=24, n_valid=1, n_test=1, seed=0).train)
    return [
        Example(f"pick the letter for item {'x' * (3 * i)}", "abc"[i % 3], choices=("a", "b", "c")) for i in range(24)
    ]


def run_checks(model: Any, model_name: str, python: Path, *, rank: int = 4, strength: float = 2.0) -> dict[str, Any]:
    """Both checks on ``model``; returns the agreement numbers (also what the JSON holds)."""
    view = hf_view(model)
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = _examples(model_name)
    n_layers = view.config.num_hidden_layers
    lo_cfg = LoreftConfig(rank=rank, first_n=7, last_n=7, seed=0)
    edit = LoreftEdit.for_model(model, lo_cfg)
    lo_rows = [tokenize_example(tok, ex, max_length=256) for ex in examples[:16:4]]  # prompts of different lengths
    prompt_lens = [sum(1 for label in labels if label == -100) for _, labels in lo_rows]
    repe_rows = []
    for i, ex in enumerate(examples):
        wrong = [c for c in ex.choices or () if c != ex.answer][i % 2 if len(ex.choices or ()) > 2 else 0]
        repe_rows += [
            tokenize_example(tok, ex, max_length=256),
            tokenize_example(tok, ex, max_length=256, answer=wrong),
        ]
    layers = list(range(1, n_layers - 1))
    control_ids = lo_rows[0][0]
    spec = {
        "config": _llama_config(view),
        "loreft": {
            "rank": rank,
            "rows": [ids for ids, _ in lo_rows],
            "locations": [_windows(n, lo_cfg.first_n, lo_cfg.last_n) for n in prompt_lens],
        },
        "repe": {
            "positive": [ids for ids, _ in repe_rows[0::2]],
            "negative": [ids for ids, _ in repe_rows[1::2]],
            "layers": layers,
            "pad_id": pad,
            "batch_size": 8,
            "strength": strength,
            "control_ids": control_ids,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "spec.json").write_text(json.dumps(spec))
        weights = {
            k: v.detach().float().clone().contiguous() for k, v in view.state_dict().items()
        }  # clone: tied embeddings
        save_file(weights, str(work / "model.safetensors"))
        save_file(edit.to_safetensors(), str(work / "loreft.safetensors"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"HF_HUB_OFFLINE": "1"}
        done = subprocess.run(
            [str(python), str(SIDE), str(work)], capture_output=True, text=True, env=env, timeout=1800
        )
        if done.returncode != 0:
            raise RuntimeError(f"reference side failed:\n{done.stderr[-3000:]}")
        ref = load_file(str(work / "reference_out.safetensors"))

    out: dict[str, Any] = {"model": model_name, "layers": n_layers, "d_model": view.config.hidden_size}
    # LoReFT: the same rows, right-padded in one batch with the prompt declared, on both backends
    batch = collate(lo_rows, pad, "right")
    kw = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    with torch.no_grad(), answer_positions(answer_mask(batch.labels)):
        with edit.attached(model, Backend.HF_VIEW) as net:
            ours_hf = net(input_ids=batch.input_ids, **kw).logits
        with edit.attached(model, Backend.HOOK_POINTS) as net:
            ours_tl = net(batch.input_ids, **kw)
        plain = view(input_ids=batch.input_ids, **kw).logits
    diffs_hf, diffs_tl, effect = [], [], []
    for i, (ids, _) in enumerate(lo_rows):
        theirs = ref[f"loreft_logits_{i}"]
        diffs_hf.append(float((ours_hf[i, : len(ids)] - theirs).abs().max()))
        diffs_tl.append(float((ours_tl[i, : len(ids)] - theirs).abs().max()))
        effect.append(float((plain[i, : len(ids)] - theirs).abs().max()))
    out["loreft"] = {
        "rank": rank,
        "positions": "f7+l7 shared",
        "rows": len(lo_rows),
        "prompt_lens": prompt_lens,
        "param_copy_max_abs": float(ref["loreft_param_copy_max_abs"]),
        "max_abs_logit_diff_hf_view": max(diffs_hf),
        "max_abs_logit_diff_hook_points": max(diffs_tl),
        "edit_effect_max_abs_logit": min(effect),
    }
    # RePE reading: repeng's pca_diff = our centred PCA of the paired differences
    feats = residual_at_last_token(model, repe_rows, batch_size=8)
    direction, _ = reading_directions(feats[0::2], feats[1::2], center=True)
    cos = [float(direction[layer] @ ref[f"repeng_direction_{layer}"]) for layer in layers]
    # RePE control: repeng's vector in our edit vs ControlModel, on one prompt
    repe = RepeEdit.for_model(model, RepeConfig(strength=strength, layers=tuple(layers)))
    for layer in layers:
        repe.direction[layer] = ref[f"repeng_direction_{layer}"]
    with torch.no_grad():
        base = view(input_ids=torch.tensor([control_ids])).logits[0]
        with repe.attached(model) as net:
            controlled = net(input_ids=torch.tensor([control_ids])).logits[0]
    out["repe"] = {
        "pairs": len(repe_rows) // 2,
        "layers": layers,
        "strength": strength,
        "min_cosine_reading": min(cos),
        "mean_cosine_reading": sum(cos) / len(cos),
        "max_abs_logit_diff_control": float((controlled - ref["repeng_control_logits"]).abs().max()),
        "control_effect_max_abs_logit": float((base - ref["repeng_control_logits"]).abs().max()),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "embedded"), default="tiny")
    parser.add_argument("--build-env", action="store_true", help=f"create the reference venv at {ENV} and exit")
    parser.add_argument("--out", type=Path, default=Path("runs/reference"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.build_env:
        build_env()
        return
    python, why = reference_python()
    if python is None:
        raise SystemExit(why)
    if args.model == "tiny":
        from jolalens.testing import tiny_model

        model = tiny_model(seed=0, n_layers=4)  # repeng reads layers 1..L-2 like us: needs L > 2
    else:
        import jolalens

        model = jolalens.load_model()
    result = run_checks(model, args.model, python) | {"reference_env": why}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.model}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()

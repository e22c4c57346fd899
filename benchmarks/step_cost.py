"""Cost of a JoLA training step against the floor, measured side by side in one run.

floor      : the stock Hugging Face model (SDPA attention), no edit, frozen weights, forward and
             backward to an input-embedding leaf: the cheapest step any activation edit can have.
jola       : the same forward with the JoLA edit on the ``o_proj`` inputs of ``hf_view(model)``
             (what ``train_jola`` runs by default); backward to the edit parameters.
floor_answer, jola_train : the same pair with the loss as ``train_jola`` computes it (the
             unembedding only at answer positions); jola_train is compared with floor_answer.
bridge     : the same edit at ``blocks.{l}.attn.hook_z`` on the TransformerBridge (eager attention).
merged fwd : forward of the model with the edit folded into ``o_proj``, against the base forward.

Variants run interleaved (ABCD ABCD ...) and each ratio uses the medians, so machine noise hits
all of them alike. On CUDA each variant's peak memory (``max_memory_allocated`` over one step,
weights included) is recorded too. The edit's parameters stay float32 on a bf16 model, as in
``train_jola``. Writes ``step_cost_<device>.json`` and ``.md`` under ``--out`` (``runs/step_cost``).

    python benchmarks/step_cost.py                       # CPU: the embedded SmolLM2-135M, float32
    python benchmarks/step_cost.py --shapes tiny --repeats 3    # CPU check of the random-model path
    python benchmarks/step_cost.py --shapes llama-3.2-1b,llama-3.1-8b   # GPU: random bf16 models
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import jolalens
from jolalens import Backend, JolaConfig, JolaEdit, hf_view, merge_edit
from jolalens.answer_loss import answer_logits
from jolalens.data import Batch
from jolalens.runners import runner_for
from jolalens.train import freeze

SHAPES = {
    # name: (layers, d_model, heads, kv_heads, d_mlp, vocab, batch, seq)
    "llama-3.2-1b": (16, 2048, 32, 8, 8192, 128256, 8, 512),
    "llama-3.1-8b": (32, 4096, 32, 8, 14336, 128256, 4, 512),
    "tiny": (2, 64, 4, 2, 128, 1000, 2, 64),  # a CPU check of this path, not a measurement
}


def random_bridge(shape: str, dtype: torch.dtype, device: str):
    """A random Llama of a given shape as a TransformerBridge (timing does not depend on weights)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    from jolalens.testing import char_tokenizer

    layers, d_model, heads, kv, d_mlp, vocab, _, _ = SHAPES[shape]
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: an 8B model never exists in float32
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    return TransformerBridge.boot_transformers(
        shape, hf_model=hf, tokenizer=char_tokenizer(), dtype=dtype, device=device
    )


def make_batch(vocab: int, batch: int, seq: int, answer_len: int, device: str) -> Batch:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (batch, seq), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[:, -answer_len:] = ids[:, -answer_len:]
    mask = torch.ones_like(ids)
    pos = torch.arange(seq).expand(batch, seq).contiguous()
    return Batch(ids, mask, labels, pos).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fns: dict[str, Callable[[], None]], device: str, repeats: int, warmup: int) -> dict[str, dict]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, int] = {}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for name, fn in fns.items():
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            fn()
            sync(device)
            peaks[name] = torch.cuda.max_memory_allocated()
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "all_s": v, "peak_bytes": peaks.get(k)}
        for k, v in times.items()
    }


def run(model, label: str, batch: Batch, device: str, repeats: int, warmup: int) -> dict:
    view = hf_view(model)
    edit = JolaEdit.for_model(model, JolaConfig()).to(device)
    edit.train()
    # The edit stays float32 on a bf16 model (mixed precision), as train_jola holds it.
    embed = view.get_input_embeddings()

    def ce(logits):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(), ignore_index=-100)

    def floor():
        leaf = embed(batch.input_ids).detach().requires_grad_(True)
        out = view(inputs_embeds=leaf, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        ce(out.logits).backward()

    def floor_answer():
        leaf = embed(batch.input_ids).detach().requires_grad_(True)
        hidden = view.model(
            inputs_embeds=leaf, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).last_hidden_state
        mask = batch.labels[:, 1:] != -100
        F.cross_entropy(view.lm_head(hidden[:, :-1][mask]).float(), batch.labels[:, 1:][mask]).backward()

    def jola():
        with edit.attached(model, Backend.HF_VIEW) as net:
            out = net(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
            ce(out.logits).backward()
        edit.zero_grad(set_to_none=True)

    def jola_train():
        with runner_for(model, Backend.HF_VIEW).attached(edit) as runner:
            picked, targets = answer_logits(runner, batch)
            F.cross_entropy(picked.float(), targets).backward()
        edit.zero_grad(set_to_none=True)

    def bridge():
        with edit.attached(model, Backend.HOOK_POINTS) as net:
            logits = net(batch.input_ids, attention_mask=batch.attention_mask)
            ce(logits).backward()
        edit.zero_grad(set_to_none=True)

    with freeze(model):
        steps = measure(
            {"floor": floor, "jola": jola, "floor_answer": floor_answer, "jola_train": jola_train, "bridge": bridge},
            device,
            repeats,
            warmup,
        )
    edit.eval()
    merged = merge_edit(model, edit)
    merged_view = hf_view(merged)
    with torch.no_grad():

        def base_fwd():
            view(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)

        def merged_fwd():
            merged_view(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)

        fwd = measure({"base_forward": base_fwd, "merged_forward": merged_fwd}, device, repeats, warmup)
    floor_t = steps["floor"]["median_s"]
    ratios = {k: v["median_s"] / floor_t for k, v in steps.items()}
    ratios["jola_train"] = steps["jola_train"]["median_s"] / steps["floor_answer"]["median_s"]
    ratios["floor_answer"] = steps["floor_answer"]["median_s"] / floor_t
    ratios["merged_forward"] = fwd["merged_forward"]["median_s"] / fwd["base_forward"]["median_s"]
    mem = {}
    if steps["floor"]["peak_bytes"]:
        mem = {k: v["peak_bytes"] / steps["floor"]["peak_bytes"] for k, v in steps.items()}
        mem["jola_train"] = steps["jola_train"]["peak_bytes"] / steps["floor_answer"]["peak_bytes"]
    return {
        "model": label,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "edit_dtype": str(edit.additive.dtype).removeprefix("torch."),
        "batch": list(batch.input_ids.shape),
        "steps": steps,
        "forward": fwd,
        "time_ratio_vs_floor": ratios,
        "peak_memory_ratio_vs_floor": mem,
        # CPU: one process runs every variant, so only its overall peak (resident set) is known
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def to_markdown(results: list[dict], device_name: str) -> str:
    lines = [
        f"Machine: {device_name}; torch {torch.__version__}; median of interleaved repeats.",
        "",
        "Ratios: jola and bridge against floor (full logits); jola_train against floor_answer "
        "(both unembed only answer positions, as train_jola does).",
        "",
        "| model | dtype | batch x seq | floor | jola (o_proj, SDPA) | bridge hook_z (eager) "
        "| floor_answer | jola_train | merged fwd / base fwd | peak mem floor | peak mem jola / floor "
        "| peak mem jola_train / floor_answer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, q = r["steps"], r["time_ratio_vs_floor"]
        mem = r["peak_memory_ratio_vs_floor"]

        def fmt_mem(key, mem=mem):
            return f"{mem[key]:.3f}x" if key in mem else "n/a (CPU)"

        peak = s["floor"]["peak_bytes"]
        lines.append(
            f"| {r['model']} | {r.get('dtype', '?')} | {r['batch'][0]} x {r['batch'][1]} "
            f"| {s['floor']['median_s'] * 1e3:.1f} ms "
            f"| {s['jola']['median_s'] * 1e3:.1f} ms ({q['jola']:.3f}x) "
            f"| {s['bridge']['median_s'] * 1e3:.1f} ms ({q['bridge']:.3f}x) "
            f"| {s['floor_answer']['median_s'] * 1e3:.1f} ms "
            f"| {s['jola_train']['median_s'] * 1e3:.1f} ms ({q['jola_train']:.3f}x) "
            f"| {q['merged_forward']:.3f}x | {f'{peak / 2**30:.2f} GiB' if peak else 'n/a (CPU)'} "
            f"| {fmt_mem('jola')} | {fmt_mem('jola_train')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="embedded", help="'embedded' and/or names in SHAPES, comma-separated")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=96)
    parser.add_argument("--answer-len", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="auto: the embedded model in float32 (as RESULTS.md measured it), random shapes in bf16",
    )
    parser.add_argument("--out", default="runs/step_cost")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for shape in args.shapes.split(","):
        if shape == "embedded":
            name = "float32" if args.dtype == "auto" else args.dtype
            model = jolalens.load_model(device=device, dtype=name)
            batch = make_batch(model.cfg.d_vocab, args.batch, args.seq, args.answer_len, device)
        else:
            dtype = torch.bfloat16 if args.dtype == "auto" else getattr(torch, args.dtype)
            model = random_bridge(shape, dtype, device)
            _, _, _, _, _, vocab, b, s = SHAPES[shape]
            batch = make_batch(vocab, b, s, args.answer_len, device)
        results.append(run(model, shape, batch, device, args.repeats, args.warmup))
        print(json.dumps(results[-1]["time_ratio_vs_floor"], indent=2))
        del model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device == "cuda" else "cpu"
    payload = {"machine": machine(), "torch": torch.__version__, "args": vars(args), "results": results}
    (out / f"step_cost_{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = to_markdown(results, machine())
    (out / f"step_cost_{tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

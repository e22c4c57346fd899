"""``make demo``: load the embedded model, show its dimensions and a generated answer."""

from __future__ import annotations

from .hf_view import hf_view
from .models import load_model, model_dims

__all__ = ["run_demo"]


def run_demo(model_name: str = "smollm2-135m-instruct") -> int:
    print(f"Loading {model_name} (offline) ...")
    model = load_model(model_name)
    dims = model_dims(model)
    print(
        f"{model.cfg.model_name}: {dims.n_layers} layers x {dims.n_heads} query heads "
        f"({dims.n_kv_heads} KV heads), d_head={dims.d_head}, d_model={dims.d_model}"
    )
    tok = model.tokenizer
    question = "What is the capital of France?"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = hf_view(model).generate(ids, max_new_tokens=24, do_sample=False)
    print(f"Q: {question}\nA: {tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()}")
    return 0

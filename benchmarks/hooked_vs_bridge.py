"""Time the same JoLA edit's validation CE and log-likelihood scoring on three paths.

SmolLM2-135M (embedded): the bridge on its fast HF view, the bridge on hook points, and (in the
TransformerLens 3.x environment) the ``HookedTransformer`` holding the same weights. Writes
``runs/hooked_vs_bridge.json``. Usage (TL 3.9 env, for all three rows):

    HF_HUB_OFFLINE=1 .venv-tl3/bin/python benchmarks/hooked_vs_bridge.py --n 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import jolalens
from jolalens import JolaConfig, JolaEdit
from jolalens.evaluate import score_choices
from jolalens.tasks import load_task_splits
from jolalens.testing_hooked import hooked_transformer_available
from jolalens.train import TrainConfig, validation_ce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=16, help="test items of arc_easy")
    parser.add_argument("--out", default="runs/hooked_vs_bridge.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bridge = jolalens.load_model()
    items = load_task_splits("arc_easy", n_train=1, n_valid=1, n_test=args.n, seed=0).test
    edit = JolaEdit.for_model(bridge, JolaConfig(seed=0))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    edit.eval()
    paths = [("bridge", bridge, "hf_view"), ("bridge", bridge, "hook_points")]
    if hooked_transformer_available():
        from jolalens.testing_hooked import hooked_twin

        paths.append(("HookedTransformer", hooked_twin(bridge), "hook_points"))
    rows = []
    for name, model, backend in paths:
        cfg = TrainConfig(backend=backend, progress=False, eval_batch_size=8)
        t0 = time.perf_counter()
        ce = validation_ce(model, edit, items, config=cfg)
        t_ce = time.perf_counter() - t0
        t0 = time.perf_counter()
        if backend == "hf_view":
            scores = score_choices(model, items, edit=edit, progress=False)
        else:  # score_choices picks the path itself; force hook points on the bridge
            import jolalens.runners as runners

            saved = runners.has_hf_view
            runners.has_hf_view = lambda m: False
            try:
                scores = score_choices(model, items, edit=edit, progress=False)
            finally:
                runners.has_hf_view = saved
        t_ll = time.perf_counter() - t0
        rows.append(
            {
                "model": name,
                "backend": backend,
                "val_ce": ce,
                "val_ce_s": round(t_ce, 2),
                "loglik_s": round(t_ll, 2),
                "first_scores": scores[0],
            }
        )
        print(rows[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"n": args.n, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""jolalens beside the authors' released package (``jola==0.0.1``): time per step, memory, FLOP rate.

Same model (the embedded SmolLM2-135M, from the fp32 checkpoint jolalens caches, which
transformers 4.45 loads as a Llama), same items in the same batches (one commonsense task,
``--n-train`` items, sequential order), same batch size, same thread count, same number of
steps. Each system runs in its own subprocess (so each has its own peak RSS); rounds alternate
which goes first, because the machine is shared and noisy. The released package needs
transformers 4.45.1 and trl 0.8.1, so it runs in its own virtual environment, created on first
use under ``~/.cache/jolalens/peer_envs/jola`` (torch pinned first, then ``jola==0.0.1`` and
``rich``, which it imports without declaring).

Reported per system: median seconds per optimiser step after ``--warmup`` steps, peak RSS (or
CUDA ``max_memory_allocated``), and the achieved rate of useful FLOPs as a fraction of the dense
fp32 matmul rate measured in the same run. Useful FLOPs of a step = 2 x forward FLOPs (forward
plus backward to the activations; the base weights are frozen, so no weight gradients): the
decoder matmuls over real tokens (padding excluded), attention over real keys, and the
unembedding at answer positions only. Both systems are charged the same formula for their own
batches, so the fractions compare directly.

``--accuracy-epochs E`` also trains both for E epochs (each with its own defaults otherwise),
imports the released edit into jolalens and scores both with jolalens' evaluator (loglik).

    python benchmarks/peer_jola.py --steps 6 --warmup 1 --rounds 2          # CPU
    python benchmarks/peer_jola.py --device cuda --steps 30 --warmup 5      # GPU (pending)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402
from peer_jola_report import markdown, summarise  # noqa: E402  (re-exported: the pooled summary and its table)

__all__ = [
    "HERE",
    "PEER_PACKAGES",
    "accuracy_run",
    "ensure_peer_env",
    "jolalens_worker",
    "main",
    "markdown",
    "parse_args",
    "peer_args",
    "peer_env_dir",
    "released_edit_to_jolalens",
    "summarise",
    "task_splits",
    "thread_env",
    "write_task_jsonl",
]

log = logging.getLogger("peer_jola")
HERE = Path(__file__).resolve().parent
PEER_PACKAGES = ("jola==0.0.1", "rich")  # rich: imported by trl 0.8.1's SFTTrainer, undeclared (B8)


# ---- the released package's environment ----------------------------------------------------------


def peer_env_dir() -> Path:
    base = os.environ.get("JOLALENS_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "jolalens") / "peer_envs" / "jola"


def ensure_peer_env(env: Path, torch_spec: str) -> Path:
    """The env's python, creating the env first if it cannot import jola and rich."""
    py = env / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", "import jola, rich"], capture_output=True).returncode == 0:
        return py
    log.info("creating the released package's environment in %s (torch first: %s)", env, torch_spec)
    env.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, torch_spec], check=True)  # before jola, so its deps never pull another torch
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    return py


# ---- data -----------------------------------------------------------------------------------------


def task_splits(args: argparse.Namespace) -> Any:
    """The task's seeded splits in ``--items`` form: the paper's labels, or the option texts (cloze items)."""
    from jolalens.tasks import load_task_splits

    protocol = "cloze" if args.items == "cloze" else None
    return load_task_splits(
        args.task, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test, seed=args.seed, protocol=protocol
    )


def write_task_jsonl(splits: Any, out: Path) -> dict[str, list[Any]]:
    """``train.json``/``valid.json``/``test.json`` as JSON lines {instruction, answer}: what the released loader
    reads."""
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": list(splits.train), "valid": list(splits.valid), "test": list(splits.test)}
    for name, examples in parts.items():
        with open(out / f"{name}.json", "w") as f:
            for ex in examples:
                f.write(json.dumps({"instruction": ex.instruction, "answer": ex.answer}) + "\n")
    return parts


# ---- the jolalens worker (runs in this interpreter's environment) ---------------------------------


def jolalens_worker(args: argparse.Namespace) -> dict[str, Any]:
    """``--steps`` of the exact step ``train_jola`` runs (HF view, answer-only unembedding), timed."""
    import torch
    import torch.nn.functional as F

    import jolalens
    from jolalens import Backend, JolaConfig, JolaEdit, SparsityConfig, TrainConfig
    from jolalens.answer_loss import answer_logits, make_batches, tokenize_rows
    from jolalens.data import padding_id
    from jolalens.runners import runner_for
    from jolalens.train import _lr_lambda, freeze, sparsity_penalty

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = jolalens.load_model(device=args.device, dtype=dtype)
    load_s = time.perf_counter() - t0
    splits = task_splits(args)
    cfg = TrainConfig(batch_size=args.batch_size, warmup_steps=args.warmup_steps, progress=False, seed=args.seed)
    tok = model.tokenizer
    rows = tokenize_rows(tok, list(splits.train), cfg, "training")
    batches = make_batches(rows, cfg.batch_size, padding_id(tok), cfg.padding_side, range(len(rows)))
    edit = JolaEdit.for_model(model, JolaConfig(seed=args.seed)).to(args.device)
    gates = [p for n, p in edit.named_parameters() if n.startswith("log_alpha_")]
    vectors = [p for n, p in edit.named_parameters() if not n.startswith("log_alpha_")]
    opt = torch.optim.AdamW(
        [{"params": vectors, "lr": cfg.lr}, {"params": gates, "lr": cfg.lr * cfg.gate_lr_scale}], lr=cfg.lr
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, len(batches) * cfg.epochs))
    sparsity = SparsityConfig()
    step_s: list[float] = []
    cpu_s: list[float] = []
    info: list[dict[str, int]] = []
    with freeze(model), runner_for(model, Backend.HF_VIEW).attached(edit) as runner:
        edit.train()
        for t in range(args.max_steps):
            batch = batches[t % len(batches)].to(args.device)
            _machine.sync(args.device)
            start, cpu0 = time.perf_counter(), time.process_time()
            picked, targets = answer_logits(runner, batch)
            penalty, _ = sparsity_penalty(edit, sparsity, t)
            loss = F.cross_entropy(picked.float(), targets) + penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vectors + gates, cfg.grad_clip)
            opt.step()
            sched.step()
            _machine.sync(args.device)
            step_s.append(time.perf_counter() - start)
            cpu_s.append(time.process_time() - cpu0)
            lengths = batch.attention_mask.sum(-1).tolist()
            info.append(
                {
                    "tokens": int(sum(lengths)),
                    "answer_tokens": int(targets.numel()),
                    "padded": int(batch.attention_mask.numel()),
                    "keys": int(sum(n * (n + 1) // 2 for n in lengths)),
                }
            )
    hf_cfg = jolalens.hf_view(model).config
    return {
        "system": f"jolalens {jolalens.__version__}",
        "step_s": step_s,
        "cpu_s": cpu_s,
        "batches": info,
        "load_s": load_s,
        "trainable_params": edit.n_trainable(),
        "peak_rss_mb": _machine.peak_rss_mb(),
        "peak_gpu_mb": _machine.peak_gpu_mb(args.device),
        "threads": torch.get_num_threads(),
        "shape": _machine.ModelShape.from_hf_config(hf_cfg).to_dict(),
    }


# ---- accuracy at the same budget (optional) -------------------------------------------------------


def released_edit_to_jolalens(model: Any, tensors: dict[str, Any]) -> Any:
    """The released edit (attn_A: multiplicative, attn_v: additive, log_g2/log_g1 their gates) as a JolaEdit."""
    from jolalens import JolaConfig, JolaEdit

    edit = JolaEdit.for_model(model, JolaConfig())
    edit.load_state_dict(
        {
            "additive": tensors["attn_v"],
            "multiplicative": tensors["attn_A"],
            "log_alpha_additive": tensors["log_g1"],
            "log_alpha_multiplicative": tensors["log_g2"],
        }
    )
    return edit.eval()


def accuracy_run(
    args: argparse.Namespace, peer_py: Path, data_dir: Path, parts: dict[str, list[Any]]
) -> dict[str, Any]:
    import torch

    import jolalens
    from jolalens import TrainConfig, train_jola
    from jolalens.evaluate import evaluate

    edit_path = data_dir / "released_edit.pt"
    _machine.run_worker(
        [
            str(peer_py),
            str(HERE / "_peer_jola_worker.py"),
            *peer_args(args, data_dir),
            "--epochs",
            str(args.accuracy_epochs),
            "--save-edit",
            str(edit_path),
        ],
        env=thread_env(args),
    )
    model = jolalens.load_model(device=args.device)
    released = released_edit_to_jolalens(model, torch.load(edit_path))
    cfg = TrainConfig(
        epochs=args.accuracy_epochs,
        patience=args.accuracy_epochs,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        progress=False,
    )
    ours = train_jola(model, parts["train"], parts["valid"], config=cfg).edit
    out = {}
    for name, edit in (
        ("jola==0.0.1 (released)", released),
        (f"jolalens {jolalens.__version__}", ours),
        ("no edit", None),
    ):
        res = evaluate(model, parts["test"], args.task, edit=edit, protocol="loglik", progress=False)
        out[name] = {"accuracy": res.summary["accuracy"], "n": res.summary["n"]}
    return out


# ---- main -----------------------------------------------------------------------------------------


def thread_env(args: argparse.Namespace) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else {}


def peer_args(args: argparse.Namespace, data_dir: Path) -> list[str]:
    from jolalens.models import EMBEDDED_MODELS, _converted_checkpoint

    ckpt = _converted_checkpoint(EMBEDDED_MODELS["smollm2-135m-instruct"])
    return [
        "--ckpt",
        str(ckpt),
        "--data-dir",
        str(data_dir),
        "--batch-size",
        str(args.batch_size),
        "--warmup-steps",
        str(args.warmup_steps),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument(
        "--items",
        choices=["label", "cloze"],
        default="label",
        help="label: the paper's answer1..4 items; cloze: the option texts as answers (both packages still "
        "wrap every item in their Alpaca template; accuracy scores each option text as the continuation)",
    )
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-valid", type=int, default=50)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round and system (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; the first system alternates")
    ap.add_argument("--warmup-steps", type=int, default=50, help="learning-rate warm-up (the paper's 50)")
    ap.add_argument("--accuracy-epochs", type=int, default=0, help="also train E epochs each and score both (0: skip)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both workers (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--torch-spec", default="torch==2.13.0", help="torch for the peer env, installed before jola")
    ap.add_argument("--out", type=Path, default=Path("runs/benchmarks/peer_jola"), help="writes OUT.json and OUT.md")
    ap.add_argument("--worker", choices=["jolalens"], help=argparse.SUPPRESS)
    ap.add_argument("--max-steps", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1 or args.batch_size < 1:
        ap.error("--steps, --rounds and --batch-size must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker == "jolalens":
        print(json.dumps(jolalens_worker(args)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    peer_py = ensure_peer_env(peer_env_dir(), args.torch_spec)
    data_dir = Path(str(args.out) + "_data")
    parts = write_task_jsonl(task_splits(args), data_dir)
    machine = _machine.machine_info()
    matmul = _machine.matmul_rate(device=args.device)
    total = args.warmup + args.steps
    peer_cmd = [str(peer_py), str(HERE / "_peer_jola_worker.py"), *peer_args(args, data_dir), "--max-steps", str(total)]
    ours_cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "jolalens",
        "--max-steps",
        str(total),
        *[
            f"--{k.replace('_', '-')}={getattr(args, k)}"
            for k in (
                "task",
                "items",
                "n_train",
                "n_valid",
                "n_test",
                "batch_size",
                "warmup_steps",
                "threads",
                "device",
                "seed",
            )
        ],
    ]
    runs: dict[str, list[dict[str, Any]]] = {"released": [], "jolalens": []}
    for r in range(args.rounds):
        order = [("released", peer_cmd), ("jolalens", ours_cmd)]
        for name, cmd in order if r % 2 == 0 else order[::-1]:
            log.info("round %d/%d: %s, %d steps", r + 1, args.rounds, name, total)
            runs[name].append(_machine.run_worker(cmd, env={**thread_env(args), "HF_HUB_OFFLINE": "1"}))
            log.info("  step seconds: %s", [round(s, 2) for s in runs[name][-1]["step_s"]])
    matmul_after = _machine.matmul_rate(device=args.device)
    best = max(matmul["gflops_best"], matmul_after["gflops_best"])
    summary = {name: summarise(rs, args.warmup, best) for name, rs in runs.items()}
    result: dict[str, Any] = {
        "command": _machine.command_line(__file__, argv),
        "task": args.task,
        "items": args.items,
        "n_train": args.n_train,
        "batch_size": args.batch_size,
        "device": args.device,
        "threads": threads,
        "machine": machine,
        "matmul": {**matmul, "gflops_best": best, "after": matmul_after},
        "flop_formula": (
            "2 x forward; forward = 2*P_body*real_tokens + 4*L*H*d_head*real_keys + 2*d_model*vocab*answer_tokens"
        ),
        "summary": summary,
        "speedup": summary["released"]["median_step_s"] / summary["jolalens"]["median_step_s"],
        "speedup_cpu": summary["released"]["median_step_cpu_s"] / summary["jolalens"]["median_step_cpu_s"],
        "runs": runs,
        "peer_versions": runs["released"][0].get("versions"),
    }
    if args.accuracy_epochs:
        result["accuracy"] = accuracy_run(args, peer_py, data_dir, parts)
    _machine.write_report(args.out, result, markdown(result))


if __name__ == "__main__":
    main()

"""Worker for ``peer_jola.py`` that runs in the released package's own environment (jola==0.0.1).

It trains the released ``JoLAModel`` exactly through the package's public path
(``jola_from_pretrained`` -> ``unfreeze_jola_params`` -> ``JoLADataset`` ->
``make_data_collator`` -> ``JoLATrainer``) and times each optimiser step with a Trainer
callback. The only change is a sequential sampler, so that both packages see the same items
in the same batches. Prints one JSON line; ``--save-edit`` also writes the trained edit's
tensors (``attn_A``, ``attn_v``, ``log_g1``, ``log_g2`` stacked over layers) for import into
jolalens. Imports nothing from jolalens (transformers 4.45 lives here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402

log = logging.getLogger("peer_jola_worker")


def _tokenizer(ckpt: Path):
    """The checkpoint's tokenizer.json as a fast tokenizer (its tokenizer_config is transformers 5's)."""
    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if isinstance(cfg.get(k), str)}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(ckpt / "tokenizer.json"), **special)
    tok.padding_side = "right"
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument(
        "--data-dir", type=Path, required=True, help="train.json/valid.json/test.json (instruction, answer)"
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=0, help="timing mode: stop after this many steps")
    ap.add_argument("--epochs", type=int, default=1, help="accuracy mode (--max-steps 0): epochs to train")
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save-edit", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_DISABLED", "true")
    from jola import JoLADataset, JoLAModel, JoLATrainer, make_data_collator
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback, TrainingArguments, set_seed

    set_seed(args.seed)
    t_load = time.perf_counter()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = JoLAModel.jola_from_pretrained(
        str(args.ckpt), cache_dir=None, applied_module="attention", torch_dtype=dtype
    )
    model.unfreeze_jola_params()
    model.to(args.device)
    tok = _tokenizer(args.ckpt)
    load_s = time.perf_counter() - t_load
    data = JoLADataset(data_path=str(args.data_dir), train_size=0).data_from_file()
    collator = make_data_collator(tokenizer=tok)

    tokens: list[dict[str, int]] = []

    class TimedTrainer(JoLATrainer):
        def _get_train_sampler(self):  # the same items in the same batches as jolalens
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False):
            mask = inputs["attention_mask"]
            lengths = mask.sum(-1).tolist()
            answer_pos = int((inputs["labels"][:, 1:] != -100).sum())
            tokens.append(
                {
                    "tokens": int(sum(lengths)),
                    "answer_tokens": answer_pos,
                    "padded": int(mask.numel()),
                    "keys": int(sum(n * (n + 1) // 2 for n in lengths)),
                    "logit_rows": int(mask.numel()),
                }
            )
            return super().compute_loss(model, inputs, return_outputs)

    step_times: list[float] = []
    step_cpu: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            _machine.sync(args.device)
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, targs, state, control, **kw):
            _machine.sync(args.device)
            step_times.append(time.perf_counter() - self.t0)
            step_cpu.append(time.process_time() - self.c0)

    with tempfile.TemporaryDirectory() as out_dir:
        targs = TrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=args.warmup_steps,
            num_train_epochs=args.epochs,
            max_steps=args.max_steps if args.max_steps > 0 else -1,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=10**6,
            report_to=[],
            seed=args.seed,
            use_cpu=not args.device.startswith("cuda"),
            dataloader_num_workers=0,
            bf16=dtype is torch.bfloat16,
            disable_tqdm=True,
        )
        trainer = TimedTrainer(
            model=model,
            train_dataset=data["train"],
            eval_dataset=None,
            tokenizer=tok,
            data_collator=collator,
            args=targs,
            callbacks=[StepTimer()],
            gate_scheduler="expon",
            max_seq_length=400,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    if args.save_edit is not None:
        layers = model.model.layers
        edit = {
            "attn_A": torch.stack([torch.stack(list(lay.self_attn.attn_A)) for lay in layers]).detach().float().cpu(),
            "attn_v": torch.stack([torch.stack(list(lay.self_attn.attn_v)) for lay in layers]).detach().float().cpu(),
            "log_g1": torch.stack([lay.self_attn.log_g1[:, 0] for lay in layers]).detach().float().cpu(),
            "log_g2": torch.stack([lay.self_attn.log_g2[:, 0] for lay in layers]).detach().float().cpu(),
        }
        torch.save(edit, args.save_edit)
    import jola
    import transformers
    import trl

    print(
        json.dumps(
            {
                "system": "jola==0.0.1 (released)",
                "versions": {
                    "jola": getattr(jola, "__version__", "0.0.1"),
                    "transformers": transformers.__version__,
                    "trl": trl.__version__,
                    "torch": torch.__version__,
                },
                "step_s": step_times,
                "cpu_s": step_cpu,
                "batches": tokens[: len(step_times)],
                "load_s": load_s,
                "train_s": train_s,
                "trainable_params": trainable,
                "peak_rss_mb": _machine.peak_rss_mb(),
                "peak_gpu_mb": _machine.peak_gpu_mb(args.device),
                "threads": torch.get_num_threads(),
                "shape": _machine.ModelShape.from_hf_config(model.config).to_dict(),
            }
        )
    )


if __name__ == "__main__":
    main()

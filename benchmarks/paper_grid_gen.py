"""What the paper grid does with a finished run: compress its items, and score its kept edit with the
generation protocol (re-scored on a GPU, or its stored generations re-read with the current extractor).
"""

from __future__ import annotations

import json
from pathlib import Path

from paper_grid_cells import Cell

__all__ = ["compress_items", "edit_kept", "reextract_generation", "rescore_generation", "score_generation"]


def compress_items(run_dir: Path) -> None:
    """``test_items.csv`` -> ``.csv.gz`` (a third of the size): every committed byte also travels
    to each lent GPU machine with the working tree."""
    import gzip

    plain = run_dir / "test_items.csv"
    if plain.is_file():
        tmp = run_dir / ".test_items.csv.gz.tmp"
        tmp.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
        tmp.replace(run_dir / "test_items.csv.gz")
        plain.unlink()


def edit_kept(run_dir: Path, method: str) -> bool:
    """Whether a run's trained weights are on disk (an unedited method, zero-shot, has none to keep)."""
    from jolalens.methods import get_method

    return get_method(method).unedited or (run_dir / "edit" / "jola_weights.safetensors").is_file()


def rescore_generation(
    model, cell: Cell, out: Path, config, *, edit_dir: Path | None = None, provenance: dict | None = None
) -> dict:
    """Score a main-table run's edit with the generation protocol on the same test items.

    ``edit_dir``: where the edit is (default: the main run's own ``edit/``); ``provenance`` is
    recorded in ``gen_result.json`` when the edit comes from a retrained copy of the run.
    """
    from jolalens import load_edit
    from jolalens.evaluate import Protocol, evaluate
    from jolalens.methods import get_method
    from jolalens.tasks import load_task_splits

    run_dir = Cell("main", cell.task, cell.method, cell.seed).run_dir(out)
    splits = load_task_splits(cell.task, n_train=0, n_valid=0, n_test=config.n_test, seed=cell.seed)
    edit = None if get_method(cell.method).unedited else load_edit(edit_dir or run_dir / "edit", model)
    result = evaluate(
        model,
        splits.test,
        cell.task,
        edit=edit,
        protocol=Protocol.GEN,
        style=config.train.prompt_style,
        max_length=config.train.max_length,
        progress=False,
    )
    result.items.drop(columns=["instruction"], errors="ignore").to_csv(run_dir / "gen_test_items.csv.gz", index=False)
    row = {
        "task": cell.task,
        "method": cell.method,
        "seed": cell.seed,
        "protocol": "gen",
        "accuracy": float(result.summary["accuracy"]),
        "n_test": len(splits.test),
        "unparsed": float(result.summary["unparsed"]),
        "eval_seconds": round(float(result.summary["seconds"]), 1),
        "device": str(next(model.parameters()).device),
        **(provenance or {}),
    }
    tmp = run_dir / ".gen_result.json.tmp"
    tmp.write_text(json.dumps(row, indent=2) + "\n")
    tmp.replace(run_dir / "gen_result.json")
    return row


def reextract_generation(run_dir: Path, task: str, test: list) -> tuple[float, float] | None:
    """Read the answers of a run's stored generations again with the current extractor.

    The generated text is kept per item, so a change to ``extract_answer`` needs no GPU: the
    predictions, ``correct`` and ``gen_result.json`` are rewritten in place. ``test``: the task's
    test examples the run was scored on. Returns the accuracy before and after, or None when the
    run has no stored generations.
    """
    import pandas as pd

    from jolalens.evaluate import extract_answer

    path, result_path = run_dir / "gen_test_items.csv.gz", run_dir / "gen_result.json"
    if not (path.is_file() and result_path.is_file()):
        return None
    items = pd.read_csv(
        path, dtype={"answer": str, "output": str, "prediction": str}, keep_default_na=False, na_values=[""]
    )
    if len(items) != len(test) or list(items["answer"].astype(str)) != [ex.answer for ex in test]:
        raise ValueError(
            f"{path}: its items are not the first {len(test)} test items of {task}; rescore it on a GPU instead"
        )
    outputs = items["output"].fillna("").astype(str)
    predictions = [extract_answer(o, task, ex.choices) for o, ex in zip(outputs, test, strict=True)]
    row = json.loads(result_path.read_text())
    before = float(row["accuracy"])
    stored = [None if pd.isna(p) else p for p in items["prediction"]]
    if stored == predictions and "unparsed" in row:
        return before, before  # unchanged: leave the files (and their gzip timestamps) alone
    items["prediction"] = predictions
    items["correct"] = [p is not None and p == ex.answer for p, ex in zip(predictions, test, strict=True)]
    row.update(
        accuracy=float(items["correct"].mean()), unparsed=float(sum(p is None for p in predictions) / len(items))
    )
    if stored != predictions:
        items.to_csv(path, index=False)
    result_path.write_text(json.dumps(row, indent=2) + "\n")
    return before, row["accuracy"]


def score_generation(model, cell: Cell, out: Path, config, log) -> dict:
    """A ``gen`` cell: re-score the main run's edit, retraining it (group ``rerun``) if not kept."""
    from jolalens.compare import run_compare

    main_dir = Cell("main", cell.task, cell.method, cell.seed).run_dir(out)
    if edit_kept(main_dir, cell.method):
        return rescore_generation(model, cell, out, config)
    again = Cell("rerun", cell.task, cell.method, cell.seed)
    if not (again.run_dir(out) / "result.json").is_file():
        log(f"  {main_dir} kept no weights: retraining it as {again.key}")
        run_compare(model, config, out / "rerun", log=log)
        compress_items(again.run_dir(out))
    if not edit_kept(again.run_dir(out), cell.method):
        raise FileNotFoundError(f"{again.run_dir(out)} has no edit weights either; delete that run to retrain it")
    main_score = json.loads((main_dir / "result.json").read_text())["score"]
    rerun_score = json.loads((again.run_dir(out) / "result.json").read_text())["score"]
    provenance = {
        "edit_from": f"rerun/runs/{cell.task}/{cell.method}/seed{cell.seed}",
        "loglik_score_main": main_score,
        "loglik_score_rerun": rerun_score,
    }
    return rescore_generation(model, cell, out, config, edit_dir=again.run_dir(out) / "edit", provenance=provenance)

"""Generation metrics of NLG tasks: corpus BLEU (sacrebleu) and ROUGE-L F (rouge-score)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["nlg_scores"]


def nlg_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[float, list[float], list[float]]:
    """Corpus BLEU (sacrebleu, 0-100), per-item sentence BLEU and ROUGE-L F (0-100, best reference)."""
    import sacrebleu
    from rouge_score import rouge_scorer, tokenizers

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    width = max((len(r) for r in references), default=1)
    # one stream per reference slot; an item with fewer references has None there (sacrebleu skips it)
    streams: list[list[Any]] = [[r[k] if k < len(r) else None for r in references] for k in range(width)]
    corpus = sacrebleu.corpus_bleu(list(predictions), streams).score if predictions else 0.0
    # the tokenizer passed explicitly: without one rouge-score logs through absl, which installs a
    # handler on the root logger and doubles every later log line of the calling program
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizers.DefaultTokenizer(use_stemmer=True))
    rouge = [
        100 * scorer.score_multi(list(refs), pred)["rougeL"].fmeasure
        for pred, refs in zip(predictions, references, strict=True)
    ]
    sent = [sacrebleu.sentence_bleu(pred, list(refs)).score for pred, refs in zip(predictions, references, strict=True)]
    return corpus, sent, rouge

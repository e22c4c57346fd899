"""Beam search without a KV cache, for models that run on TransformerLens hook points.

:func:`beam_search` recomputes every running beam's whole sequence at each step (all beams of
all prompts in one batch) and keeps the bookkeeping of Hugging Face's ``generate(num_beams=k,
do_sample=False)`` in transformers 4.4x-5.x, so that the hook-point path decodes what the HF
view decodes:

* Each step, every running beam's next-token log-probabilities (float32 ``log_softmax``) are
  added to its running sum; of all ``beams * vocab`` continuations of a prompt, the best
  ``max(2, 1 + n_eos) * num_beams`` are kept (one ``topk``). At the first step only the first
  beam counts (the others start at ``-1e9``), so the beams do not start as copies.
* A kept continuation *stops* when its token is an end-of-sequence id, or when it reaches
  ``prompt + max_new_tokens`` tokens. Of the stopped ones, those ranked among the first
  ``num_beams`` become finished hypotheses, scored ``sum_logprobs / generated ** length_penalty``
  (``generated`` counts the end-of-sequence token); a prompt keeps its best ``num_beams``.
* The best ``num_beams`` continuations that did not stop are the next running beams.
* A prompt is done when all ``num_beams`` finished slots are filled and its best running beam,
  divided by ``generated ** length_penalty`` at the current length, cannot beat the worst of
  them (``early_stopping=False``, Hugging Face's default); ``early_stopping=True`` also stops
  accepting hypotheses once the slots are full; ``"never"`` with ``length_penalty > 0`` bounds
  the running beam at ``max_new_tokens`` instead. Decoding stops when every prompt is done.
* The result is each prompt's best hypothesis after its (left-padded) prompt; shorter ones are
  filled with ``pad_token_id`` up to the longest.

Logits processors that a Hugging Face generation config may add (repetition penalty, minimum
length, ...) are not applied: jolalens's decoding sets none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["beam_search"]

_NEG = -1.0e9  # score of an empty slot / an excluded candidate (the value Hugging Face uses)


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    """``t[b, idx[b, j], ...]`` for ``t`` of shape ``[batch, beams, ...]``."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def beam_search(
    next_logits: Callable[[Tensor, Tensor], Tensor],
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> Tensor:
    """The best beam of each left-padded prompt: ``[batch, prompt + generated]`` token ids.

    ``next_logits(ids, mask)`` gets ``[rows, length]`` ids and attention mask (left padding
    marked by zeros) and returns the next-token logits ``[rows, vocab]`` of each row.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    eos_list = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos = torch.tensor(eos_list, dtype=torch.long, device=device)
    fill = pad_token_id if pad_token_id is not None else (eos_list[0] if eos_list else 0)
    total = prompt_len + max_new_tokens
    k = num_beams
    keep = max(2, 1 + len(eos_list)) * k
    if max_new_tokens < 1:
        return input_ids

    # running beams: ids and mask over the final width (columns past the current length unused)
    run_ids = torch.full((batch, k, total), fill, dtype=torch.long, device=device)
    run_ids[:, :, :prompt_len] = input_ids[:, None, :]
    mask = torch.ones((batch, k, total), dtype=torch.long, device=device)
    mask[:, :, :prompt_len] = attention_mask.long()[:, None, :]
    run_score = torch.full((batch, k), _NEG, dtype=torch.float32, device=device)
    run_score[:, 0] = 0.0
    # finished hypotheses: the best k per prompt, best first
    fin_ids = run_ids.clone()
    fin_score = torch.full((batch, k), _NEG, dtype=torch.float32, device=device)
    fin_filled = torch.zeros((batch, k), dtype=torch.bool, device=device)
    fin_len = torch.zeros((batch, k), dtype=torch.long, device=device)
    improvable = torch.ones(batch, dtype=torch.bool, device=device)
    top_rank = torch.arange(keep, device=device) < k

    for step in range(max_new_tokens):
        cur = prompt_len + step
        logits = next_logits(run_ids[:, :, :cur].reshape(batch * k, cur), mask[:, :, :cur].reshape(batch * k, cur))
        logp = torch.log_softmax(logits.to(device=device, dtype=torch.float32), dim=-1)
        vocab = logp.shape[-1]
        total_lp = (logp.view(batch, k, vocab) + run_score[:, :, None]).view(batch, k * vocab)
        cand_score, flat = torch.topk(total_lp, keep, dim=-1)
        source, token = flat // vocab, flat % vocab
        cand_ids = _gather(run_ids, source)
        cand_ids[:, :, cur] = token
        stopped = torch.isin(token, eos) if eos_list else torch.zeros_like(token, dtype=torch.bool)
        if cur + 1 >= total:
            stopped = torch.ones_like(stopped)

        # the best k continuations that did not stop run on
        alive = cand_score + stopped.float() * _NEG
        nxt = torch.topk(alive, k, dim=-1).indices
        run_ids, run_score = _gather(cand_ids, nxt), _gather(alive, nxt)

        # stopped continuations ranked in the first k become hypotheses, if the prompt takes any
        generated = cur + 1 - prompt_len
        new = stopped & top_rank[None, :]
        score = cand_score / (generated**length_penalty)
        if early_stopping is True:
            score = score + fin_filled.all(-1, keepdim=True).float() * _NEG
        score = score + (~improvable[:, None]).float() * _NEG
        score = score + (~new).float() * _NEG
        merged = torch.topk(torch.cat([fin_score, score], dim=1), k, dim=-1).indices
        fin_ids = _gather(torch.cat([fin_ids, cand_ids], dim=1), merged)
        fin_score = _gather(torch.cat([fin_score, score], dim=1), merged)
        fin_filled = _gather(torch.cat([fin_filled, new], dim=1), merged)
        fin_len = _gather(torch.cat([fin_len, torch.full_like(token, generated)], dim=1), merged)

        # can a running beam still beat the worst finished hypothesis?
        if early_stopping == "never" and length_penalty > 0:
            bound_len = max_new_tokens
        else:
            bound_len = generated
        best_running = run_score[:, 0] / (bound_len**length_penalty)
        worst = torch.where(fin_filled.all(-1), fin_score.min(-1).values, torch.full_like(best_running, _NEG))
        improvable &= best_running > worst
        if not bool(improvable.any()) or bool(stopped.all()):
            break
        if early_stopping is True and bool(fin_filled.all()):
            break

    width = prompt_len + int(fin_len[:, 0].max())
    return fin_ids[:, 0, :width]

"""Data-parallel training of one edit over several processes (``accelerate launch``).

Every process holds the frozen model and a contiguous shard of every global batch. A step
back-propagates the shard's *summed* answer cross-entropy, then one all-reduce carries each
rank's failure flag, its answer-token count, its CE sum and its gradients; dividing by the
global token count gives exactly the gradient of the single-process token-mean loss on the
same global batch. The regulariser (e.g. JoLA's gate penalty) depends on the parameters only,
so every rank adds its gradient after the reduction, once, as a single process would.

A rank whose shard is empty (a last batch smaller than the world) runs a zero-weighted forward
pass on a row of the batch, so that the edits' own noise generators stay in step on all ranks.
With the default JoLA gates (one noise draw per forward pass) every rank draws the noise the
single-process run draws; per-example gate noise and LoRA dropout are drawn per shard instead
(same distribution, other values).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
from torch import Tensor

from .errors import TrainingError

__all__ = [
    "FAULT_ENV",
    "DataParallel",
    "current_data_parallel",
    "data_parallel",
    "launched_with_several_processes",
]

logger = logging.getLogger(__name__)

FAULT_ENV = "JOLALENS_FAULT_RANK_STEP"  # "RANK:STEP": that rank raises at that optimiser step (tests)
T = TypeVar("T")

_CURRENT: ContextVar[DataParallel | None] = ContextVar("jolalens_data_parallel", default=None)


def launched_with_several_processes() -> bool:
    """Whether a launcher (``accelerate launch``, ``torchrun``) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group: its rank, the group size and its device."""

    rank: int
    world_size: int
    device: torch.device

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size), got {self.rank} of {self.world_size}")

    @classmethod
    def from_accelerate(cls, *, timeout_s: float = 600.0) -> DataParallel:
        """Join the process group ``accelerate launch`` set up (gloo on CPU, NCCL on GPUs).

        ``timeout_s``: how long a collective waits for a silent peer before failing.
        """
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout_s))
        if state.num_processes < 2:
            raise TrainingError(
                "data-parallel training needs several processes; start it with "
                "`accelerate launch --num_processes N -m jolalens.cli train --distributed ...`"
            )
        return cls(
            rank=state.process_index,
            world_size=state.num_processes,
            device=torch.device(state.device),
        )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0

    def shard(self, rows: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``rows`` (sizes differ by at most one; may be empty)."""
        n, k = len(rows), self.world_size
        start = self.rank * (n // k) + min(self.rank, n % k)
        stop = start + n // k + (1 if self.rank < n % k else 0)
        return list(rows[start:stop])

    def shard_for_step(self, rows: Sequence[T]) -> tuple[list[T], float]:
        """This rank's rows of a global batch and their loss weight: ``(shard, 1.0)``, or, when the
        shard is empty, ``(first row, 0.0)``, so that every rank runs one forward pass per step."""
        shard = self.shard(rows)
        return (shard, 1.0) if shard else (list(rows[:1]), 0.0)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks (in place; returned for convenience)."""
        import torch.distributed as dist

        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except (RuntimeError, OSError) as exc:  # a peer died or went silent
            raise TrainingError(
                f"rank {self.rank}: a peer process stopped answering ({exc}); "
                "see the other ranks' output for the cause, then rerun"
            ) from exc
        return tensor

    def broadcast_parameters(self, params: Sequence[Tensor]) -> None:
        """Copy rank 0's values of ``params`` to every rank (all start from the same edit)."""
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                buf = p.detach().to(self.device).contiguous()
                dist.broadcast(buf, src=0)
                p.copy_(buf.to(p.device))

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def backward_step(
        self,
        step: int,
        shard_ce_sum: Callable[[], tuple[Tensor, int]],
        trainable: Sequence[Tensor],
    ) -> tuple[Tensor, int]:
        """Gradients of the global token-mean CE in every ``p.grad``; returns (global CE, tokens).

        ``shard_ce_sum()`` runs this rank's forward pass and returns its summed answer CE and
        token count (0 tokens for a zero-weighted padding shard). A failure on any rank ends
        the step on every rank with :class:`TrainingError` naming the rank.
        """
        failure: BaseException | None = None
        n_local, ce_local = 0, torch.zeros((), device=self.device)
        try:
            _maybe_inject_fault(self.rank, step)
            ce_sum, n_local = shard_ce_sum()
            ce_sum.backward()
            ce_local = ce_sum.detach().float()
        except Exception as exc:  # reported to the peers, so that none waits for this rank
            failure = exc
        status = torch.zeros(self.world_size, device=self.device)
        status[self.rank] = 1.0 if failure is not None else 0.0
        grads = [
            torch.zeros(p.numel(), device=self.device)
            if (failure is not None or p.grad is None)
            else p.grad.detach().reshape(-1).float().to(self.device)
            for p in trainable
        ]
        packet = torch.cat(
            [
                status,
                torch.tensor([float(n_local)], device=self.device),
                ce_local.reshape(1).to(self.device),
                *grads,
            ]
        )
        self.all_reduce_sum(packet)
        failed = [r for r in range(self.world_size) if packet[r] > 0]
        if failed:
            why = f": {type(failure).__name__}: {failure}" if failure is not None else "; see its output"
            raise TrainingError(
                f"training step {step} failed on rank(s) {failed}{why}. Nothing was saved; fix the cause and rerun"
            ) from failure
        offset = self.world_size
        n_global = int(packet[offset].item())
        ce_global = packet[offset + 1] / max(n_global, 1)
        flat = packet[offset + 2 :] / max(n_global, 1)
        start = 0
        for p in trainable:
            piece = flat[start : start + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype)
            start += p.numel()
            if p.grad is None:
                p.grad = piece.clone()
            else:
                p.grad.copy_(piece)
        return ce_global, n_global


def _maybe_inject_fault(rank: int, step: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault_rank, fault_step = (int(x) for x in spec.split(":"))
    if rank == fault_rank and step == fault_step:
        raise RuntimeError(f"fault injected by {FAULT_ENV}={spec}")


@contextmanager
def data_parallel(dp: DataParallel | None) -> Iterator[DataParallel | None]:
    """Inside the block, :func:`jolalens.train.train_edit` (every trainable method) trains
    across ``dp``'s group."""
    token = _CURRENT.set(dp)
    try:
        yield dp
    finally:
        _CURRENT.reset(token)


def current_data_parallel() -> DataParallel | None:
    """The group set by the innermost :func:`data_parallel` block (``None``: one process)."""
    return _CURRENT.get()

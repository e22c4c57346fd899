"""Length-grouped training batches and length-sorted validation batches."""

import random

import pytest
import torch

from jolalens import Example, SparsityConfig, TrainConfig, train_jola
from jolalens.answer_loss import epoch_batches, length_sorted


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 200) for _ in range(n)]


def _padding(batches: list[list[int]], lengths: list[int]) -> float:
    total = sum(max(lengths[j] for j in b) * len(b) for b in batches)
    return 1 - sum(lengths) / total


def test_grouping_off_is_the_plain_shuffled_order():
    lengths = _lengths(21)
    batches = epoch_batches(21, lengths, 4, 1, torch.Generator().manual_seed(7))
    order = torch.randperm(21, generator=torch.Generator().manual_seed(7)).tolist()
    assert batches == [order[i : i + 4] for i in range(0, 21, 4)]


@pytest.mark.parametrize("n", [21, 64, 200])
def test_grouping_keeps_every_row_once_and_the_step_count(n):
    lengths = _lengths(n)
    batches = epoch_batches(n, lengths, 8, 4, torch.Generator().manual_seed(0))
    assert sorted(j for b in batches for j in b) == list(range(n))
    assert len(batches) == -(-n // 8)
    assert all(len(b) == 8 for b in batches[:-1]) or n % 8  # a short batch only where rows run out


def test_grouping_cuts_padding_and_still_varies_between_epochs():
    lengths = _lengths(200)
    gen = torch.Generator().manual_seed(0)
    plain = [_padding(epoch_batches(200, lengths, 8, 1, gen), lengths) for _ in range(5)]
    gen = torch.Generator().manual_seed(0)
    epochs = [epoch_batches(200, lengths, 8, 4, gen) for _ in range(5)]
    grouped = [_padding(b, lengths) for b in epochs]
    assert max(grouped) < 0.6 * min(plain), (plain, grouped)
    assert len({tuple(map(tuple, b)) for b in epochs}) == 5  # not the same batches every epoch


def test_length_sorted_orders_rows_by_token_count():
    rows = [([1] * n, [-100] * n) for n in (5, 2, 9, 2)]
    assert [len(rows[j][0]) for j in length_sorted(rows)] == [2, 2, 5, 9]


def test_length_grouping_is_validated():
    with pytest.raises(ValueError, match="length_grouping"):
        TrainConfig(length_grouping=0)


def test_training_with_length_grouping_runs_and_learns(tiny):
    letters = "abcdefgh"
    data = [Example(f"repeat {letters[i % 8] * (1 + i % 5)}", letters[i % 8] * 3) for i in range(32)]
    cfg = TrainConfig(epochs=6, batch_size=4, warmup_steps=2, lr=5e-2, progress=False, length_grouping=4)
    result = train_jola(tiny, data, data[:8], config=cfg, sparsity=SparsityConfig(lam=0.1))
    assert result.history["val_ce"].min() < result.history["val_ce"].iloc[0]


@pytest.mark.parametrize("command", [["train", "--out", "x"], ["compare", "--tasks", "arc_easy", "--out", "x"]])
def test_train_and_compare_share_the_training_option_flags(command):
    from jolalens.cli import build_parser
    from jolalens.cli_train import training_options

    args = build_parser().parse_args([*command, "--length-grouping", "4", "--checkpoint-activations"])
    options = training_options(args)
    assert options == {"answer_eos": False, "checkpoint_activations": True, "length_grouping": 4}
    assert TrainConfig(**options).length_grouping == 4
    defaults = training_options(build_parser().parse_args(command))
    assert TrainConfig(**defaults) == TrainConfig()

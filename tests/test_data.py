"""Batching: length-grouped training batches keep every row once per epoch, stay random and pad less."""

import pytest
import torch

from lowrank_lab.data import LengthGroupedBatches, make_loader, row_length


def _epoch(sampler):
    return [list(batch) for batch in sampler]


def test_grouped_batches_use_every_row_once_per_epoch_and_repeat_by_seed():
    lengths = [(7 * i) % 61 + 1 for i in range(1000)]
    sampler = LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(3), group_batches=8)
    first, second = _epoch(sampler), _epoch(sampler)
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(1000))
        assert len(epoch) == len(sampler) == 63 and all(1 <= len(b) <= 16 for b in epoch)
    assert first != second  # each epoch reshuffles
    again = LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(3), group_batches=8)
    assert _epoch(again) == first  # same seed, same order


def test_grouped_batches_pad_less_than_random_batches_and_keep_a_random_order():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (4000,), generator=generator).tolist()
    grouped = _epoch(LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(1)))
    randomly = torch.randperm(4000, generator=generator).view(-1, 16).tolist()

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped) < 0.6 * padded(randomly)  # random batches of 16 pad to near the longest row
    longest = [max(lengths[i] for i in b) for b in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # long and short mixed


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"group_batches": 0}, "group_batches must be a positive int, got 0"),
])
def test_grouped_batches_refuse_bad_sizes(kwargs, message):
    args = {"lengths": [1, 2, 3], "batch_size": 2, "generator": torch.Generator(), **kwargs}
    with pytest.raises(ValueError, match=message):
        LengthGroupedBatches(**args)


def test_make_loader_groups_only_shuffled_training_batches():
    class Tokenizer:  # the loader is built, never iterated: no tokenizer call
        pass

    rows = [{"text": "x" * n, "label": 0} for n in range(1, 40)]
    assert row_length(rows[4]) == 5 and row_length({"question": "ab", "solution": "cde"}) == 5
    loader = make_loader(rows, Tokenizer(), "classification", 4, 32, shuffle=True, group_by_length=True)
    assert isinstance(loader.batch_sampler, LengthGroupedBatches)
    with pytest.raises(ValueError, match="group_by_length needs shuffle=True"):
        make_loader(rows, Tokenizer(), "classification", 4, 32, group_by_length=True)


def test_progress_bars_can_be_switched_off_for_static_copies(monkeypatch):
    from lowrank_lab.runtime import progress_enabled

    monkeypatch.delenv("LOWRANK_LAB_NO_PROGRESS", raising=False)
    assert progress_enabled()
    monkeypatch.setenv("LOWRANK_LAB_NO_PROGRESS", "1")
    assert not progress_enabled()
    monkeypatch.setenv("LOWRANK_LAB_NO_PROGRESS", "0")
    assert progress_enabled()

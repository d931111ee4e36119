"""The shared training loop's helpers: batches per process, length buckets, precision choice, batch sizing."""

from __future__ import annotations

import pytest
import torch

from components.training import Distributed, Precision, TrainingError, auto_batch_size, length_buckets


def test_each_process_gets_an_equal_disjoint_share_of_the_batches():
    batches = list(range(7))
    shares = [Distributed(rank, 3).shard(batches) for rank in range(3)]
    assert shares == [[0, 3], [1, 4], [2, 5]]


def test_one_process_keeps_every_batch():
    assert Distributed().shard([1, 2, 3]) == [1, 2, 3]


def test_fewer_batches_than_processes_is_refused_with_advice():
    with pytest.raises(TrainingError, match="smaller batch size or fewer processes"):
        Distributed(0, 4).shard([1, 2])


def test_length_buckets_group_similar_lengths_and_reshuffle_per_epoch():
    items = list(range(20))
    epoch0 = length_buckets(items, lambda x: x, 4, seed=1, epoch=0)
    assert sorted(tuple(b) for b in epoch0) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15),
                                                (16, 17, 18, 19)]
    assert epoch0 == length_buckets(items, lambda x: x, 4, seed=1, epoch=0)
    assert any(epoch0 != length_buckets(items, lambda x: x, 4, seed=1, epoch=e) for e in range(1, 5))


def test_auto_precision_is_fp32_on_cpu_and_bf16_autocasts():
    assert Precision("auto", torch.device("cpu")).name == "fp32"
    bf16 = Precision("bf16", torch.device("cpu"))
    with bf16.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


def test_auto_batch_size_on_cpu_is_the_cpu_default_and_numbers_pass_through():
    assert auto_batch_size("auto", torch.device("cpu"), cpu_default=3) == 3
    assert auto_batch_size(12, torch.device("cpu")) == 12

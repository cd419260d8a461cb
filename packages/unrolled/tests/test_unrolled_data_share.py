"""How a distributed job shares data: each rank's part of a step's batch, whole-volume
validation batches with the same count on every rank, and bad options of single processes."""

from __future__ import annotations

import pytest
import torch

import unrolled
from unrolled.training import rank_share, validation_batches, volume_ids


def test_rank_shares_make_the_global_batch():
    indices = unrolled.batch_indices(3, 28, 4, seed=1)
    shares = [rank_share(indices, r, 2) for r in range(2)]
    assert shares[0] + shares[1] == indices
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        rank_share(indices, 0, 3)


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_validation_keeps_volumes_whole_and_batch_counts_equal(world, batch):
    volumes = ["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["d"] * 2 + ["e"]
    per_rank = [validation_batches(volumes, batch, r, world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # the same number of batches everywhere
    seen = sorted(i for batches in per_rank for b in batches for i in b)
    assert seen == list(range(len(volumes)))  # every sample once
    for batches in per_rank:
        assert all(len(b) <= batch for b in batches)
        mine = {volumes[i] for b in batches for i in b}
        for other in per_rank:
            if other is not batches:
                assert not mine & {volumes[i] for b in other for i in b}  # whole volumes
    loads = [sum(len(b) for b in batches) for batches in per_rank]
    assert max(loads) - min(loads) <= 5  # at most the largest volume apart


def test_fewer_volumes_than_ranks_split_slices():
    per_rank = [validation_batches(["a"] * 6, 2, r, 4) for r in range(4)]
    assert sorted(i for batches in per_rank for b in batches for i in b) == list(range(6))
    assert len({len(b) for b in per_rank}) == 1


class _Volumes(torch.utils.data.Dataset):
    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return i

    def volume_ids(self):
        return self.labels


def test_volume_ids_protocol():
    assert volume_ids([0, 1, 2], 3) == [0, 1, 2]  # no volume_ids(): each index its own
    assert volume_ids(_Volumes(["x", "x", "y"]), 2) == ["x", "x"]
    with pytest.raises(ValueError, match=r"volume_ids\(\) returned 1 labels for 3 samples"):
        volume_ids(_Volumes(["x"]), 3)


def test_replicas_need_a_distributed_job():
    data = unrolled.make_dataset("multicoil_mri", "train", image_size=16, num_coils=4)
    model = unrolled.MoDL(iterations=2, features=4, cg_max_iter=10)
    with pytest.raises(ValueError, match=r"replicas=2 splits P-GLEAM .* launch with torchrun"):
        unrolled.train(
            model, data, strategy="greedy", strategy_options={"replicas": 2}, steps=1,
            progress=False,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("backprop", {"devices": ["cpu"]}, r"devices=\['cpu'\] only applies to strategy='greedy'"),
        ("backprop", {"replicas": 2}, "replicas=2 only applies to strategy='greedy'"),
        ("greedy", {"replicas": 0}, "replicas must be a positive integer, got 0"),
    ],
)
def test_bad_placement_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        unrolled.Strategy(name, **options)


def test_bad_devices():
    with pytest.raises(ValueError, match="devices must name torch devices"):
        unrolled.Strategy("greedy", devices=("cpu", "gpu7"))

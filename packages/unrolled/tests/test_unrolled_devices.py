"""P-GLEAM in one process: greedy modules spread over devices equal greedy training."""

from __future__ import annotations

import torch

import unrolled
from unrolled.training import context_to


def test_modules_over_two_devices_equal_greedy():
    data = unrolled.make_dataset(
        "multicoil_mri", "train", image_size=16, num_coils=4, dtype="float64"
    )
    runs = []
    for devices in (None, ["cpu", "cpu"]):
        torch.manual_seed(0)
        model = unrolled.MoDL(iterations=4, features=4, cg_max_iter=20).double()
        options = {"modules": 4, "inner": "reversible", "devices": devices}
        result = unrolled.train(
            model, data, strategy="greedy", strategy_options=options, steps=3, batch_size=2,
            lr=1e-2, progress=False,
        )  # fmt: skip
        runs.append((torch.cat([p.detach().flatten() for p in model.parameters()]), result))
    (plain, one), (spread, two) = runs
    assert two.strategy == "greedy(M=4, inner=reversible, devices=2)"
    assert float((spread - plain).norm() / plain.norm()) < 1e-6
    assert two.losses == one.losses


def test_context_moves_a_copy_of_the_operator():
    data = unrolled.make_dataset("multicoil_mri", "train", image_size=16, num_coils=4)
    batch = data.batch([0, 1])
    context = unrolled.StageContext(batch.y, batch.physics)
    same = context_to(context, torch.device("cpu"))
    assert same.physics is batch.physics
    moved = context_to(context, torch.device("meta"))
    assert moved.physics is not batch.physics
    assert moved.y.device.type == "meta"
    assert all(t.device.type == "meta" for t in moved.physics.buffers())
    assert all(t.device.type == "cpu" for t in batch.physics.buffers())  # the original stays
    assert context_to(batch.target, torch.device("meta")).device.type == "meta"

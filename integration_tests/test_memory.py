"""Training memory of the strategies, measured as ``memroll train`` records it, a fresh process
per configuration: backprop grows with the number of unrolls, reversible and greedy stay flat,
checkpointing keeps only the unrolls' states, and reversible needs a fraction of backprop.

On CPU the figure is the peak RSS of the training loop above the RSS at its start
(``MALLOC_MMAP_THRESHOLD_=65536``, so freed tensors leave the RSS); on CUDA
``torch.cuda.max_memory_allocated``. The bounds are loose multiples of what was measured on CPU
(48 x 48, 8 coils, MoDL with 16 features: backprop 30.3 / 42.8 MB at 4 / 8 unrolls, reversible
20.4 / 21.8, greedy 22.5 / 23.1, checkpoint 26.5 / 28.5): they compare growth with depth, in
which the fixed costs (the model, Adam's state, one unroll's working memory) cancel.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from memroll_helpers import memroll

SIZES = {
    # the demo's MoDL (coupling prior, CG data consistency) on the real-anatomy 8-coil task
    "cpu": ("task.image_size=48", "model.features=16"),
    # bigger on a GPU, so that activations dominate what the CUDA context adds
    "cuda": ("task.image_size=128", "model.features=32"),
}


@cache
def _training_memory(strategy: str, unrolls: int, device: str, folder: str) -> float:
    run = f"{folder}/{device}-{strategy}-{unrolls}"
    settings = [*SIZES[device], f"model.iterations={unrolls}", "train.steps=2"]
    settings += ["train.val_every=2", "train.checkpoint_every=2", "train.batch_size=2"]
    args = [arg for s in settings for arg in ("--set", s)]
    memroll(
        "train", "demo", "--strategy", strategy, *args, "--device", device, "--run-dir", run,
        "--no-eval", "--no-progress",
        env={"MALLOC_MMAP_THRESHOLD_": "65536"},
    )  # fmt: skip
    result = json.loads(Path(run, "train_result.json").read_text())
    return (result["peak_memory_bytes"] - result["memory_baseline_bytes"]) / 1e6


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("memory"))


def _growth(strategy: str, device, folder: str) -> float:
    return _training_memory(strategy, 8, device.type, folder) - _training_memory(
        strategy, 4, device.type, folder
    )


@pytest.mark.slow
def test_backprop_grows_with_depth(device, folder):
    small = _training_memory("backprop", 4, device.type, folder)
    large = _training_memory("backprop", 8, device.type, folder)
    assert large > 1.25 * small, (small, large)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "share"), [("reversible", 0.25), ("greedy", 0.25)])
def test_memory_saving_strategies_stay_flat(strategy, share, device, folder):
    """Four more unrolls cost backprop every activation of four unrolls; reversible and greedy
    a small share of that (measured on CPU: 11% and 5%)."""
    assert _growth(strategy, device, folder) < share * _growth("backprop", device, folder)


@pytest.mark.slow
def test_checkpointing_keeps_only_the_states(device, folder):
    """Measured on CPU: 16% of backprop's growth."""
    assert _growth("checkpoint", device, folder) < 0.5 * _growth("backprop", device, folder)


@pytest.mark.slow
def test_reversible_needs_a_fraction_of_backprop(device, folder):
    """Measured on CPU at 8 unrolls: 0.51x."""
    backprop = _training_memory("backprop", 8, device.type, folder)
    reversible = _training_memory("reversible", 8, device.type, folder)
    bound = 0.7 if device.type == "cpu" else 0.5
    assert reversible < bound * backprop, (reversible, backprop)

"""Mixed precision of unrolled.train: networks in bfloat16/float16, physics and invertible layers
in float32, reversible gradients as honest as backprop's in the same precision; monitoring."""

from __future__ import annotations

import collections
import copy
import importlib.util

import pytest
import torch

import physops
import unrolled
from unrolled.training import MixedPrecision, get_loss, make_engine, model_loss

SIZE = 16
FAST = {"progress": False}


@pytest.fixture(scope="module")
def data():
    return unrolled.make_dataset("multicoil_mri", "train", image_size=SIZE, num_coils=4)


def _modl():
    torch.manual_seed(0)
    return unrolled.MoDL(iterations=2, features=4, cg_max_iter=10)


def _irim():
    torch.manual_seed(0)
    return unrolled.IRIM(steps=2, channels=8, blocks=2, hidden=4, downsampling=(1, 2))


def _conv_dtypes(model):
    """Count the output dtypes of every convolution while the model runs."""
    seen = collections.Counter()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.register_forward_hook(lambda m, i, o: seen.update([o.dtype]))
    return seen


@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
@pytest.mark.parametrize("factory", [_modl, _irim], ids=["MoDL", "IRIM"])
@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("backprop", {}),
        ("checkpoint", {}),
        ("reversible", {}),
        ("greedy", {"inner": "reversible"}),
        ("greedy", {"inner": "checkpoint"}),
    ],
    ids=["backprop", "checkpoint", "reversible", "greedy-reversible", "greedy-checkpoint"],
)
def test_mixed_precision_trains_every_strategy(data, precision, factory, strategy, options):
    model = factory()
    convs = _conv_dtypes(model)
    fp32 = unrolled.train(
        factory(), data, strategy=strategy, strategy_options=options, steps=3, batch_size=2,
        lr=1e-2, **FAST,
    )  # fmt: skip
    mixed = unrolled.train(
        model, data, strategy=strategy, strategy_options=options, steps=3, batch_size=2,
        lr=1e-2, precision=precision, **FAST,
    )  # fmt: skip
    half = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    assert set(convs) == {half}  # every network convolution ran in reduced precision
    assert mixed.losses == pytest.approx(fp32.losses, rel=2e-2)
    convs.clear()
    batch = data.batch([0])
    model(batch.y, batch.physics)
    assert set(convs) == {torch.float32}  # the hooks are gone after training


def test_physics_and_invertible_layers_stay_in_float32(data, monkeypatch):
    seen = collections.Counter()
    normal = physops.Sense.normal

    def spy(self, x):
        out = normal(self, x)
        seen.update([(x.dtype, out.dtype, torch.is_autocast_enabled("cpu"))])
        return out

    monkeypatch.setattr(physops.Sense, "normal", spy)
    unrolled.train(_modl(), data, steps=1, batch_size=2, precision="bf16-mixed", **FAST)
    assert set(seen) == {(torch.complex64, torch.complex64, False)}


def test_equilibrium_runs_in_float32(data):
    torch.manual_seed(0)
    model = unrolled.LUSER(
        iterations=2,
        features=8,
        groups=4,
        solver={"tol": 1e-3, "max_iter": 20, "on_failure": "ignore"},
    )
    convs = _conv_dtypes(model)
    unrolled.train(model, data, strategy="implicit", steps=1, batch_size=2,
                   precision="bf16-mixed", **FAST)  # fmt: skip
    assert set(convs) == {torch.float32}


def _gradient(model, batch, precision, strategy):
    model.set_strategy(strategy)
    mixed = MixedPrecision(model, precision, torch.device("cpu"))
    model.zero_grad()
    with mixed.step():
        with mixed.autocast():
            loss = model_loss(model, batch, get_loss("l1"))
        loss.backward()
    mixed.close()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("factory", [_modl, _irim], ids=["MoDL", "IRIM"])
def test_reversible_recomputes_the_networks_in_the_same_precision(data, factory):
    """The backward pass rebuilds each coupling's input and reruns its network in bfloat16 as
    the forward did: reversible equals bf16 backprop far below bf16's own error."""
    batch = data.batch([0, 1])
    model = factory()
    reference = _gradient(copy.deepcopy(model), batch, "fp32", "backprop")
    backprop = _gradient(copy.deepcopy(model), batch, "bf16-mixed", "backprop")
    reversible = _gradient(copy.deepcopy(model), batch, "bf16-mixed", "reversible")
    own_error = float((backprop - reference).norm() / reference.norm())
    assert 1e-4 < own_error < 3e-2  # bfloat16 changes the gradient ...
    assert float((reversible - backprop).norm() / backprop.norm()) < own_error  # ... more than
    # the reverse pass does


def test_reduced_precision_keeps_a_state_per_unroll(data):
    fp32 = unrolled.train(_modl(), data, strategy="reversible", steps=1, **FAST)
    bf16 = unrolled.train(
        _modl(), data, strategy="reversible", steps=1, precision="bf16-mixed", **FAST
    )
    chosen = unrolled.train(
        _modl(), data, strategy="reversible", strategy_options={"checkpoint_every": 2}, steps=1,
        precision="bf16-mixed", **FAST,
    )  # fmt: skip
    assert fp32.strategy == "reversible"
    assert bf16.strategy == "reversible(checkpoint_every=3)"  # 2 couplings + the CG step
    assert chosen.strategy == "reversible(checkpoint_every=2)"


def test_float16_scales_the_loss(data):
    model = _modl()
    opts = unrolled.TrainOptions(steps=1, precision="fp16-mixed")
    plain = make_engine(
        model, get_loss("l1"), opts, unrolled.Strategy(),
        precision=MixedPrecision(model, "fp16-mixed", torch.device("cpu")),
    )  # fmt: skip
    assert isinstance(plain.scaler, torch.amp.GradScaler)
    greedy = make_engine(
        model, get_loss("l1"), opts, unrolled.Strategy("greedy"),
        precision=MixedPrecision(model, "fp16-mixed", torch.device("cpu")),
    )  # fmt: skip
    scalers = greedy.trainer.scalers
    assert len(scalers) == 2
    assert all(isinstance(s, torch.amp.GradScaler) for s in scalers)
    assert scalers[0] is not scalers[1]  # one per module
    bf16 = MixedPrecision(model, "bf16-mixed", torch.device("cpu"))
    assert bf16.scaler() is None


def test_full_precision_tensorboard_and_bad_options(data, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'bf16-mixed'"):
        unrolled.train(_modl(), data, steps=1, precision="bf16", **FAST)
    with pytest.raises(ValueError, match="logger must be one of 'csv', 'tensorboard'"):
        unrolled.train(_modl(), data, steps=1, logger="wandb", **FAST)
    if importlib.util.find_spec("tensorboard") is not None:
        with pytest.raises(ValueError, match="logger='tensorboard' needs run_dir"):
            unrolled.train(_modl(), data, steps=1, logger="tensorboard", **FAST)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    with pytest.raises(ImportError, match=r"pip install 'memroll-unrolled\[tensorboard\]'"):
        unrolled.train(_modl(), data, steps=1, logger="tensorboard", run_dir=str(tmp_path), **FAST)


def test_tensorboard_logs_the_run(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    val = unrolled.make_dataset("multicoil_mri", "val", image_size=SIZE, num_coils=4)
    unrolled.train(
        _modl(), data, val, strategy="greedy", steps=4, batch_size=2, val_every=2, val_samples=2,
        logger="tensorboard", run_dir=str(tmp_path), **FAST,
    )  # fmt: skip
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/step_time_s", "memory/peak_mb"} <= tags
    assert {"train/loss_module_0", "train/loss_module_1"} <= tags
    assert {"val/psnr", "val/ssim", "val/nrmse"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/nrmse")] == [2, 4]
    assert all(e.value > 0 for e in events.Scalars("memory/peak_mb"))

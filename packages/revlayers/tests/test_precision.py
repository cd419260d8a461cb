"""Exact inverses whatever the TF32 settings: full-precision channel mixing, flags restored."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import Tensor

import revlayers as rl
from revlayers._precision import reduced_precision_allowed

SETTINGS = ("cuda.matmul", "cudnn.conv", "mkldnn.matmul", "mkldnn.conv")


def _setting(path: str) -> str:
    obj: object = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part)
    return str(obj.fp32_precision)  # type: ignore[attr-defined]


def _set(path: str, value: str) -> None:
    obj: object = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part)
    obj.fp32_precision = value  # type: ignore[attr-defined]


def _reduced() -> dict[str, str]:
    """Ask for reduced precision everywhere (settable without the hardware)."""
    wanted = {"cuda.matmul": "tf32", "cudnn.conv": "tf32", "mkldnn.matmul": "bf16"}
    wanted["mkldnn.conv"] = "tf32"
    for path, value in wanted.items():
        _set(path, value)
    return {p: _setting(p) for p in SETTINGS}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_householder_float32_inverse_at_rounding_level_with_64_channels(dims: int) -> None:
    layer = rl.HouseholderConv(64, reflections=3, dims=dims)
    x = torch.randn(2, 64, *(6, 4, 8)[:dims])
    assert rl.check_inverse(layer, x) <= 1e-6
    # the mixing itself agrees with a float64 computation to float32 rounding
    y = layer(x).double()
    y64 = layer.double()(x.double())
    assert ((y - y64).norm() / y64.norm()).item() <= 1e-6


def test_irim_block_3d_float32_inverse_at_rounding_level() -> None:
    block = rl.IRIMBlock(64, hidden_channels=16, downsample=2, dims=3)
    x = torch.randn(1, 64, 4, 6, 8)
    assert rl.check_inverse(block, x) <= 1e-6


def test_full_precision_switches_reduced_modes_off_inside_and_restores_them(
    tf32_settings: None,
) -> None:
    before = _reduced()
    with rl.full_precision(torch.device("cuda")):
        assert _setting("cuda.matmul") == "ieee"
        assert _setting("cudnn.conv") == "ieee"
        assert _setting("mkldnn.matmul") == "bf16"  # another device's settings stay
    assert {p: _setting(p) for p in SETTINGS} == before
    with rl.full_precision(torch.randn(2)):  # a float32 CPU tensor: oneDNN's settings
        assert _setting("mkldnn.matmul") == "ieee"
        assert _setting("mkldnn.conv") == "ieee"
        assert _setting("cuda.matmul") == "tf32"
    assert {p: _setting(p) for p in SETTINGS} == before
    with rl.full_precision(torch.randn(2, dtype=torch.float64)):  # float64: nothing to do
        assert {p: _setting(p) for p in SETTINGS} == before
    with pytest.raises(RuntimeError, match="inside"), rl.full_precision("cuda"):
        raise RuntimeError("inside")  # an exception in the block restores the settings too
    assert {p: _setting(p) for p in SETTINGS} == before


def test_matmuls_only_and_what_the_drift_hint_sees(tf32_settings: None) -> None:
    before = _reduced()
    cuda = torch.device("cuda")
    assert reduced_precision_allowed(torch.float32, cuda)
    assert not reduced_precision_allowed(torch.float64, cuda)
    with rl.full_precision(cuda, convolutions=False):
        assert _setting("cuda.matmul") == "ieee"
        assert _setting("cudnn.conv") == "tf32"  # the layers' channel mixing is a matmul
        # while a block has switched the setting, the user's own (TF32) still counts as allowed
        assert reduced_precision_allowed(torch.float32, cuda)
    assert {p: _setting(p) for p in SETTINGS} == before
    for path in SETTINGS:
        _set(path, "ieee")
    assert not reduced_precision_allowed(torch.float32, cuda)


def test_full_precision_leaves_full_precision_settings_untouched(tf32_settings: None) -> None:
    for path in SETTINGS:
        _set(path, "ieee")
    with rl.full_precision("cuda"), rl.full_precision(torch.randn(1)):
        assert all(_setting(p) == "ieee" for p in SETTINGS)
    assert all(_setting(p) == "ieee" for p in SETTINGS)


def test_full_precision_nested_and_concurrent_restore_once(tf32_settings: None) -> None:
    before = _reduced()
    entered = threading.Barrier(2)
    first_left = threading.Event()
    seen: dict[str, str] = {}

    def first() -> None:
        with rl.full_precision("cuda"):
            entered.wait()
        first_left.set()

    def second() -> None:
        with rl.full_precision("cuda"):
            entered.wait()
            first_left.wait(timeout=10)
            # the first thread left, this one is still inside: still full precision
            seen["inside"] = _setting("cuda.matmul")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert seen["inside"] == "ieee"
    assert {p: _setting(p) for p in SETTINGS} == before
    with rl.full_precision("cuda"), rl.full_precision("cuda"):
        assert _setting("cuda.matmul") == "ieee"
    assert {p: _setting(p) for p in SETTINGS} == before


def test_layers_and_engine_leave_the_settings_as_they_were(tf32_settings: None) -> None:
    before = _reduced()
    layers: list[rl.InvertibleModule] = [
        rl.HouseholderConv(4),
        rl.IRIMBlock(4, hidden_channels=4, downsample=2),
        rl.HouseholderConv(4),
    ]
    seq = rl.ReversibleSequence(layers)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    seq(x).square().mean().backward()
    assert x.grad is not None
    assert rl.check_inverse(seq, x.detach()) <= 1e-5
    assert {p: _setting(p) for p in SETTINGS} == before


# -- on a GPU (skipped cleanly without one) ----------------------------------------------------


@pytest.fixture
def forced_tf32(tf32_settings: None) -> None:
    """TF32 on, as Ampere+ users run it (the legacy flags, as most code still sets them)."""
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True


def _round_to_tf32(t: Tensor) -> Tensor:
    """Keep TF32's 10 mantissa bits: a TF32-sized error (relative ~5e-4) in plain float32."""
    bits = t.contiguous().view(torch.int32) & ~0x1FFF
    return bits.view(torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ["householder", "irim"])
def test_tf32_forced_inverses_stay_exact_on_cuda(forced_tf32: None, name: str, dims: int) -> None:
    cuda = torch.device("cuda")
    layer = (
        rl.HouseholderConv(64, dims=dims)
        if name == "householder"
        else rl.IRIMBlock(64, hidden_channels=32, downsample=2, dims=dims)
    ).to(cuda)
    x = torch.randn(2, 64, *(8, 8, 8)[:dims], device=cuda)
    assert rl.check_inverse(layer, x) <= 1e-5
    # the reverse pass (one in-place step per layer) runs under the same settings
    seq = rl.ReversibleSequence([layer, rl.HouseholderConv(64, dims=dims).to(cuda)])
    xr = x.clone().requires_grad_()
    seq(xr).square().mean().backward()
    assert xr.grad is not None
    assert torch.isfinite(xr.grad).all()
    assert seq.diagnostics.checks >= 1
    # the user's settings are still what they set
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


@pytest.mark.gpu
@pytest.mark.parametrize("exact", [False, True], ids=["layer-check", "checkpoint-check"])
def test_tf32_sized_error_in_a_user_layer_is_caught_naming_tf32(
    forced_tf32: None, exact: bool
) -> None:
    cuda = torch.device("cuda")
    layer = rl.Invertible(
        lambda x: 2 * x,
        lambda y: _round_to_tf32(y / 2),
        pass_context=False,
        name="tf32_inverse",
        exact_inverse=exact,
    )
    seq = rl.ReversibleSequence([rl.HouseholderConv(8).to(cuda), layer], on_drift="raise")
    x = torch.randn(2, 8, 16, 16, device=cuda, requires_grad=True)
    with pytest.raises(rl.DriftError, match="Likely cause: TF32") as info:
        seq(x).sum().backward()
    assert info.value.layer_index == (1 if not exact else 0)
    assert info.value.drift > rl.auto_tolerance(torch.float32)

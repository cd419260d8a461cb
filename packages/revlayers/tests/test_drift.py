"""check_drift="auto": cheap checks by default, recomputation that is never invisible."""

from __future__ import annotations

import types

import pytest
import torch
from _revlayers_helpers import SmallNet, compare_with_backprop
from torch import Tensor, nn

import revlayers as rl
from revlayers._drift import DriftPolicy, drift_error


def _off_by(eps: float, exact: bool) -> rl.Invertible:
    """``y = 2x`` whose inverse is off by a relative ``eps`` in a fixed direction."""

    def inverse(y: Tensor) -> Tensor:
        x = y / 2
        direction = torch.ones_like(x) / x.numel() ** 0.5
        return x + eps * x.norm() * direction

    return rl.Invertible(
        lambda x: 2 * x, inverse, pass_context=False, name="off_by", exact_inverse=exact
    )


def _exact_layers() -> list[rl.InvertibleModule]:
    return [
        rl.HouseholderConv(4),
        rl.AdditiveCoupling(SmallNet(2, 2), pass_context=False),
        rl.AffineCoupling(SmallNet(2, 4), pass_context=False, update="first"),
        rl.IRIMBlock(4, hidden_channels=4, downsample=2),
        rl.AdditiveCoupling(SmallNet(2, 2), pass_context=False, update="first"),
        rl.HouseholderConv(4),
    ]


def test_auto_tolerance_comes_from_the_dtype() -> None:
    assert rl.auto_tolerance(torch.float32) == 1e-5
    assert rl.auto_tolerance(torch.complex64) == 1e-5
    assert rl.auto_tolerance(torch.float64) == 1e-10
    assert rl.auto_tolerance(torch.complex128) == 1e-10
    assert rl.auto_tolerance(torch.float16) > rl.auto_tolerance(torch.float32)


@pytest.mark.parametrize(("checkpoint_every", "stored"), [(None, 1), (2, 3), (4, 2)])
def test_auto_is_the_default_and_checks_each_stored_state(
    checkpoint_every: int | None, stored: int
) -> None:
    seq = rl.ReversibleSequence(_exact_layers(), checkpoint_every=checkpoint_every)
    assert seq.check_drift == "auto"
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    seq(x).square().mean().backward()
    report = seq.diagnostics
    assert report.mode == "auto"
    assert report.checks == stored  # exact layers: only the stored states are compared
    assert report.recomputed_segments == 0
    assert 0 < report.max_drift <= rl.auto_tolerance(torch.float32)
    assert report.tolerance == rl.auto_tolerance(torch.float32)


def test_auto_checks_every_approximate_layer() -> None:
    def residual() -> rl.InvertibleResidual:
        return rl.InvertibleResidual(
            nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ELU(), nn.Conv2d(6, 4, 1)),
            pass_context=False,
        )

    layers = [
        rl.AdditiveCoupling(SmallNet(2, 2), pass_context=False),
        residual(),
        rl.HouseholderConv(4),
        residual(),
    ]
    seq = rl.ReversibleSequence(layers).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    seq(x).sum().backward()
    # layers 3 and 1 (approximate) and the stored input below layer 0
    assert seq.diagnostics.checks == 3
    assert seq.diagnostics.recomputed == []
    assert seq.diagnostics.max_drift <= 1e-10


@pytest.mark.parametrize("exact", [False, True], ids=["declared-approximate", "undeclared"])
@pytest.mark.parametrize(("checkpoint_every", "segment"), [(None, (0, 5)), (2, (2, 4))])
def test_auto_recomputes_a_drifting_segment_to_backprop_gradients(
    exact: bool, checkpoint_every: int | None, segment: tuple[int, int]
) -> None:
    # an approximate layer at index 3: declared, the layer check finds it where it happens;
    # undeclared (exact_inverse=True), the checkpoint check finds it at the stored state below
    layers = [*_exact_layers()[:3], _off_by(1e-3, exact), rl.HouseholderConv(4)]
    seq = rl.ReversibleSequence(layers, checkpoint_every=checkpoint_every).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    errors = compare_with_backprop(seq, x)
    assert max(errors.values()) <= 1e-10, errors
    report = seq.diagnostics
    assert report.recomputed == [segment]
    assert report.recomputed_segments == 1
    assert report.max_drift > 1e-4
    assert report.worst_layer == (3 if not exact else segment[0])
    # the same stack without checks silently returns wrong gradients: what "auto" prevents
    seq.check_drift = None
    assert compare_with_backprop(seq, x)["params"] > 1e-5
    assert seq.diagnostics.checks == 0
    assert seq.diagnostics.mode == "off"


def test_auto_with_raise_names_the_layer_and_a_cause() -> None:
    layers = [*_exact_layers()[:2], _off_by(1e-2, exact=False), rl.HouseholderConv(4)]
    seq = rl.ReversibleSequence(layers, on_drift="raise")
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with pytest.raises(rl.DriftError, match=r"layer 2 \(Invertible\(off_by\)\)") as info:
        seq(x).sum().backward()
    assert info.value.kind == "layer"
    assert info.value.layer_index == 2
    assert info.value.tolerance == rl.auto_tolerance(torch.float32)
    assert "Likely cause" in str(info.value)
    assert "inverse solver stopped early" in str(info.value)
    assert "TF32" not in str(info.value)  # a CPU state: TF32 is no cause here
    assert x.grad is None


def test_labels_and_explain_name_the_place_and_the_cause() -> None:
    layers = [rl.HouseholderConv(4), _off_by(1e-2, exact=False), rl.HouseholderConv(4)]
    calls: list[tuple[int, int]] = []

    def explain(first: int, last: int) -> str:
        calls.append((first, last))
        return "a solver that stopped early in block B."

    labels = ["block A", "block B", "block C"]
    seq = rl.ReversibleSequence(layers, on_drift="raise", labels=labels, explain=explain)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with pytest.raises(
        rl.DriftError,
        match=r"layer 1 \(block B: Invertible\(off_by\)\).*Likely cause: a solver that stopped",
    ) as info:
        seq(x).sum().backward()
    assert info.value.layer_name == "block B: Invertible(off_by)"
    assert calls == [(1, 1)]
    # a checkpoint check passes its segment: the layers reversed since the stored state
    unmarked = rl.ReversibleSequence(
        [rl.HouseholderConv(4), _off_by(1e-2, exact=True), rl.HouseholderConv(4)],
        on_drift="raise",
        explain=explain,
    )
    with pytest.raises(rl.DriftError, match="Likely cause: a solver that stopped"):
        unmarked(x).sum().backward()
    assert calls[-1] == (0, 2)


def test_a_models_cause_follows_tf32_where_tf32_applies(tf32_settings: None) -> None:
    cuda = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda"))
    auto = DriftPolicy.from_arguments("auto", None)
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    cause = "small mu: mu = 0.05 amplifies errors 21x per unroll."
    error = drift_error(2, "unroll 0 of 10: CGStep", 1e-3, auto, cuda, cause=cause)  # type: ignore[arg-type]
    assert "Likely cause: TF32" in str(error)
    assert "Other causes: small mu: mu = 0.05" in str(error)
    cpu = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cpu"))
    error = drift_error(2, "unroll 0 of 10: CGStep", 1e-3, auto, cpu, cause=cause)  # type: ignore[arg-type]
    assert "Likely cause: small mu: mu = 0.05" in str(error)


def test_labels_must_match_the_layers_and_explain_must_be_callable() -> None:
    with pytest.raises(ValueError, match="one label per layer, got 1 labels for 2 layers"):
        rl.ReversibleSequence([rl.HouseholderConv(4), rl.HouseholderConv(4)], labels=["a"])
    with pytest.raises(TypeError, match="explain to be a callable"):
        rl.ReversibleSequence([rl.HouseholderConv(4)], explain="why")  # type: ignore[arg-type]


def test_explicit_tolerance_keeps_raising_by_default_and_checks_every_layer() -> None:
    seq = rl.ReversibleSequence(_exact_layers(), check_drift=1e-4)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    seq(x).sum().backward()
    assert seq.diagnostics.mode == "all"
    assert seq.diagnostics.checks == len(seq) + 1  # every layer, and the stored input
    bad = rl.ReversibleSequence([rl.HouseholderConv(4), _off_by(1e-3, True)], check_drift=1e-4)
    with pytest.raises(rl.DriftError, match=r"layer 1 \(Invertible\(off_by\)\) does not"):
        bad(x).sum().backward()


def test_auto_cost_is_one_check_per_stored_state_on_a_deep_stack() -> None:
    layers: list[rl.InvertibleModule] = []
    for i in range(40):
        layers.append(rl.AdditiveCoupling(SmallNet(2, 2), pass_context=False, update="first"))
        layers.append(rl.HouseholderConv(4) if i % 2 else rl.IRIMBlock(4, 4, 2))
    seq = rl.ReversibleSequence(layers, checkpoint_every=20)
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    seq(x).sum().backward()
    assert seq.diagnostics.checks == 4
    assert seq.diagnostics.recomputed == []


def test_drift_error_messages_name_tf32_for_float32_on_cuda_with_tf32_allowed(
    tf32_settings: None,
) -> None:
    # the message only reads dtype and device: a stand-in for a CUDA state works on any machine
    cuda = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda"))
    auto = DriftPolicy.from_arguments("auto", None)
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    layer = drift_error(3, "Invertible(cg)", 1e-3, auto, cuda)  # type: ignore[arg-type]
    stored = drift_error(0, "AdditiveCoupling(g)", 2e-3, auto, cuda, where="input", top=9)  # type: ignore[arg-type]
    for error in (layer, stored):
        assert "Likely cause: TF32" in str(error)
        assert "full_precision" in str(error)
    assert stored.kind == "checkpoint"
    assert stored.layer_index == 0
    for other in (
        types.SimpleNamespace(dtype=torch.float32, device=torch.device("cpu")),
        types.SimpleNamespace(dtype=torch.float64, device=torch.device("cuda")),
    ):
        assert "TF32" not in str(drift_error(3, "x", 1e-3, auto, other))  # type: ignore[arg-type]
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    assert "TF32" not in str(drift_error(3, "x", 1e-3, auto, cuda))  # type: ignore[arg-type]

"""ReversibleSequence: gradients equal backprop, drift control, stateful layers, physics steps."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from _revlayers_helpers import SmallNet, compare_with_backprop, grads_of, mixed_layers, rel
from torch import Tensor, nn

import revlayers as rl


def assert_declared_gradient(
    seq: rl.ReversibleSequence,
    tensor: Tensor,
    inputs: tuple[Tensor, Tensor],
    loss: Callable[[Tensor], Tensor],
) -> None:
    """``seq`` matches plain backprop, and so does the gradient of ``tensor``, a tensor that a
    layer declared (a closure's, not a parameter of ``seq``)."""
    errors = compare_with_backprop(seq, *inputs)
    assert max(errors.values()) <= 1e-10, errors
    tensor.grad = None
    loss(seq(*inputs)).backward()
    assert tensor.grad is not None
    g_rev = tensor.grad.clone()
    tensor.grad = None
    seq.memory_saving = False
    loss(seq(*inputs)).backward()
    assert rel(g_rev, tensor.grad) <= 1e-10


@pytest.mark.parametrize("checkpoint_every", [None, 1, 3, 4])
def test_float64_gradients_equal_backprop_all_layers(
    checkpoint_every: int | None, device: torch.device
) -> None:
    seq = rl.ReversibleSequence(
        mixed_layers(repeats=2), checkpoint_every=checkpoint_every, check_drift=1e-8
    )
    seq = seq.to(device=device, dtype=torch.float64)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    context = torch.randn(1, 1, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    errors = compare_with_backprop(seq, x, context)
    assert max(errors.values()) <= 1e-10, errors


def test_unshared_weights_really_differ() -> None:
    # the i-RIM reference reverse pass only worked with shared weights: ours must not care
    layers = mixed_layers(repeats=3)
    firsts = [layers[i].vectors for i in (0, 5, 10)]  # type: ignore[union-attr]
    assert not torch.equal(firsts[0], firsts[1])
    assert not torch.equal(firsts[1], firsts[2])


def test_shared_weights_accumulate_gradients() -> None:
    coupling = rl.AdditiveCoupling(SmallNet(2, 2), pass_context=False)
    rotation = rl.HouseholderConv(4)
    seq = rl.ReversibleSequence([rotation, coupling, rotation, coupling, rotation]).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    errors = compare_with_backprop(seq, x)
    assert max(errors.values()) <= 1e-10, errors


def test_float32_depth_100_householder_additive() -> None:
    layers: list[rl.InvertibleModule] = []
    for _ in range(50):
        layers += [rl.HouseholderConv(8), rl.AdditiveCoupling(SmallNet(4, 4), pass_context=False)]
    seq = rl.ReversibleSequence(layers)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    errors = compare_with_backprop(seq, x)
    assert len(seq) == 100
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.parametrize("dtype", [torch.complex128])
def test_complex_state_and_complex_context(dtype: torch.dtype) -> None:
    weight = nn.Parameter(torch.randn(2, 2, dtype=torch.float64))

    class G(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(2, 2, dtype=torch.complex128))

        def forward(self, x1: Tensor, measurement: Tensor) -> Tensor:
            return (
                torch.einsum("oc,bc...->bo...", self.w, torch.tanh(x1.real) + 1j * x1.imag)
                * measurement
            )

    def affine_g(x1: Tensor, measurement: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.einsum("oc,bc...->bo...", weight, x1.real)
        return torch.sin(s), x1 * measurement

    layers = [
        rl.HouseholderConv(4, dims=1).double(),
        rl.AdditiveCoupling(G()),
        rl.AffineCoupling(affine_g),
        rl.HouseholderConv(4, dims=1).double(),
        rl.AdditiveCoupling(G(), update="first"),
    ]
    layers[2]._extra_tensors = (weight,)  # declared like Invertible(parameters=...) does
    seq = rl.ReversibleSequence(layers, checkpoint_every=2)
    x = torch.randn(2, 4, 5, dtype=dtype, requires_grad=True)
    measurement = torch.randn(1, 2, 5, dtype=dtype, requires_grad=True)
    # the declared tensor gets a gradient equal to plain backprop
    assert_declared_gradient(seq, weight, (x, measurement), lambda out: out.abs().sum())


def test_optimizer_steps_match_backprop() -> None:
    seq = rl.ReversibleSequence(mixed_layers(repeats=1), checkpoint_every=2).double()
    ref = copy.deepcopy(seq)
    ref.memory_saving = False
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    c = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    for model in (seq, ref):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            model(x, c).square().mean().backward()
            opt.step()
    for p, q in zip(seq.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)


def test_no_activations_kept_in_graph() -> None:
    seq = rl.ReversibleSequence([rl.HouseholderConv(4) for _ in range(10)], checkpoint_every=5)
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    y = seq(x)
    node = y.grad_fn
    assert node is not None
    assert type(node).__name__ == "_ReversibleFunctionBackward"
    # stored: the input, the checkpoint at layer 5 and the output; nothing per layer
    assert len(node.saved_tensors) == 3  # type: ignore[attr-defined]


def test_retain_graph_allows_a_second_backward() -> None:
    seq = rl.ReversibleSequence(mixed_layers(repeats=1)).double()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    y = seq(x, c)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()  # type: ignore[union-attr]
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_plain_path_without_grad_and_in_eval() -> None:
    seq = rl.ReversibleSequence(mixed_layers(repeats=1)).double()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    c = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = seq(x, c)
    assert y.grad_fn is None
    torch.testing.assert_close(seq.inverse(y, c), x)
    seq.eval()
    xg = x.clone().requires_grad_()
    out = seq(xg, c)
    # in eval mode with grad enabled the memory-saving path is still used
    assert out.grad_fn is not None
    assert type(out.grad_fn).__name__ == "_ReversibleFunctionBackward"


def test_nested_sequences() -> None:
    inner = rl.ReversibleSequence(mixed_layers(repeats=1), checkpoint_every=2)
    outer = rl.ReversibleSequence([rl.HouseholderConv(4), inner, rl.HouseholderConv(4)]).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    errors = compare_with_backprop(outer, x, c)
    assert max(errors.values()) <= 1e-10, errors


# -- drift ------------------------------------------------------------------------------------


class Lossy(rl.InvertibleModule):
    """Not invertible: forward squashes, inverse pretends it was the identity."""

    def forward(self, x: Tensor, *context: object) -> Tensor:
        return torch.tanh(x)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        return y


def lossy_stack() -> list[rl.InvertibleModule]:
    """Four layers, the third of them (index 2) :class:`Lossy`."""
    return [
        rl.HouseholderConv(4),
        rl.AdditiveCoupling(SmallNet(2, 2), pass_context=False),
        Lossy(),
        rl.HouseholderConv(4),
    ]


def test_non_invertible_layer_raises_drift_error_naming_it() -> None:
    seq = rl.ReversibleSequence(lossy_stack(), check_drift=1e-6).double()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    y = seq(x)
    with pytest.raises(rl.DriftError, match=r"layer 2 \(Lossy\) does not reproduce") as info:
        y.sum().backward()
    assert info.value.layer_index == 2
    assert info.value.kind == "layer"
    assert info.value.drift > 1e-6
    assert x.grad is None  # no wrong gradients were handed out


def test_drift_recompute_policy_gives_backprop_gradients() -> None:
    seq = rl.ReversibleSequence(lossy_stack(), check_drift=1e-6, on_drift="recompute").double()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    errors = compare_with_backprop(seq, x)
    assert max(errors.values()) <= 1e-12, errors
    # without the check the same stack silently returns wrong gradients: what the check prevents
    seq.check_drift = None
    assert compare_with_backprop(seq, x)["input"] > 1e-3


class Swap(rl.InvertibleModule):
    """RevNet-style coupling with a steep g: exactly invertible; its inverse amplifies rounding."""

    def forward(self, x: Tensor, *context: object) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([b + 1e3 * torch.sin(a), a], dim=1)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        p, q = y.chunk(2, dim=1)
        return torch.cat([q, p - 1e3 * torch.sin(q)], dim=1)


def test_accumulated_drift_is_caught_at_the_checkpoint() -> None:
    # every layer passes the per-layer check (it is invertible) but float32 errors explode
    layers = [Swap() for _ in range(6)]
    seq = rl.ReversibleSequence(layers, check_drift=1e-3)
    x = torch.randn(1, 2, 8)
    x.requires_grad_()
    with pytest.raises(rl.DriftError, match="rebuilt by the reverse pass differs") as info:
        seq(x).sum().backward()
    assert info.value.kind in {"checkpoint", "layer"}
    # checkpoints after every layer keep the reverse pass exact
    seq_ck = rl.ReversibleSequence(layers, checkpoint_every=1, check_drift=1e-3)
    seq_ck(x).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()


# -- stateful layers ----------------------------------------------------------------------------


def test_batchnorm_running_stats_updated_once_and_gradients_match() -> None:
    def make() -> rl.ReversibleSequence:
        torch.manual_seed(3)
        g = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.Tanh(),
            nn.Conv2d(4, 2, 1),
        )
        return rl.ReversibleSequence(
            [
                rl.HouseholderConv(4),
                rl.AdditiveCoupling(g, pass_context=False),
                rl.HouseholderConv(4),
            ]
        ).double()

    seq, ref = make(), make()
    ref.memory_saving = False
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    p1, i1, _ = grads_of(seq, [x], lambda: seq(x))
    p2, i2, _ = grads_of(ref, [x], lambda: ref(x))
    assert max(rel(a, b) for a, b in zip(p1, p2)) <= 1e-10
    assert rel(i1[0], i2[0]) <= 1e-10
    bn, bn_ref = seq[1].g[1], ref[1].g[1]  # type: ignore[index]
    assert int(bn.num_batches_tracked) == 1 == int(bn_ref.num_batches_tracked)
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var)


def test_dropout_in_training_is_refused_and_eval_is_accepted() -> None:
    g = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Dropout(0.2))
    seq = rl.ReversibleSequence([rl.AdditiveCoupling(g, pass_context=False)])
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"layer 0 .* submodule 'g.1' is Dropout"):
        seq(x)
    seq.eval()
    seq(x).sum().backward()
    assert x.grad is not None


def test_spectral_norm_estimate_not_advanced_by_recomputation() -> None:
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    layer = rl.InvertibleResidual(net, lipschitz=0.9, pass_context=False).double()
    seq = rl.ReversibleSequence([layer, rl.HouseholderConv(4).double()])
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    y = seq(x)
    u_after_forward = [s.u.clone() for _, s in layer._scales]
    y.sum().backward()
    for (_, s), u in zip(layer._scales, u_after_forward):
        torch.testing.assert_close(s.u, u, rtol=0, atol=0)


# -- physics steps and the gradient rule ---------------------------------------------------------


class _CGSolve(torch.autograd.Function):
    """Solve (A^T A + mu I) x = b by CG with an implicit backward (a custom Function in a layer)."""

    @staticmethod
    def forward(ctx, a: Tensor, mu: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        x = _cg(a, mu, b)
        ctx.save_for_backward(a, mu, x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, Tensor]:  # type: ignore[override]
        a, mu, x = ctx.saved_tensors
        v = _cg(a, mu, grad)  # the normal matrix is symmetric
        return None, -(v * x).sum().reshape(mu.shape), v


def _normal(a: Tensor, mu: Tensor, x: Tensor) -> Tensor:
    return torch.einsum("ij,bj->bi", a.T @ a, x) + mu * x


def _cg(a: Tensor, mu: Tensor, b: Tensor, iterations: int = 200) -> Tensor:
    x = torch.zeros_like(b)
    r = b - _normal(a, mu, x)
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    for _ in range(iterations):
        ap = _normal(a, mu, p)
        alpha = rs / (p * ap).sum(1, keepdim=True)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(1, keepdim=True)
        if rs_new.max() < 1e-28:
            break
        p = r + rs_new / rs * p
        rs = rs_new
    return x


def test_modl_cg_step_with_learnable_mu_and_gradient_step() -> None:
    torch.manual_seed(5)
    n = 6
    a = torch.randn(8, n, dtype=torch.float64) / 3
    raw_mu = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    alpha = 0.5 / torch.linalg.matrix_norm(a.T @ a, ord=2)

    def dc(x: Tensor, y: Tensor) -> Tensor:  # x -> (A^T A + mu I)^{-1} (A^T y + mu x)
        mu = torch.nn.functional.softplus(raw_mu)
        return _CGSolve.apply(a, mu, y @ a + mu * x)

    def dc_inverse(z: Tensor, y: Tensor) -> Tensor:
        mu = torch.nn.functional.softplus(raw_mu)
        return (_normal(a, mu, z) - y @ a) / mu

    def grad_term(x: Tensor, y: Tensor) -> Tensor:  # z = x - alpha A^T (A x - y)
        return -alpha * ((x @ a.T - y) @ a)

    prior = nn.Sequential(nn.Linear(n // 2, 8), nn.Tanh(), nn.Linear(8, n // 2)).double()
    layers: list[rl.InvertibleModule] = []
    for _ in range(3):
        layers += [
            rl.InvertibleResidual(grad_term, lipschitz=None),
            rl.AdditiveCoupling(prior, pass_context=False),
            rl.Invertible(dc, dc_inverse, parameters=[raw_mu]),
        ]
    seq = rl.ReversibleSequence(layers, check_drift=1e-8)
    x0 = torch.randn(4, n, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert_declared_gradient(seq, raw_mu, (x0, y), lambda out: out.square().sum())


def test_undeclared_closure_tensor_is_detected() -> None:
    scale = torch.tensor(2.0, requires_grad=True)
    layer = rl.Invertible(
        lambda x: x * scale, lambda y: y / scale, pass_context=False, name="scale"
    )
    seq = rl.ReversibleSequence([rl.HouseholderConv(3, dims=1), layer])
    x = torch.randn(1, 3, 4, requires_grad=True)
    y = seq(x)
    with pytest.raises(
        ValueError, match=r"layer 1 \(Invertible\(scale\)\) computes its output from a tensor"
    ):
        y.sum().backward()


def test_undeclared_tensor_from_an_outer_graph_is_detected() -> None:
    raw = torch.tensor(1.0, requires_grad=True)
    scale = raw.exp()  # non-leaf computed outside the layer
    layer = rl.Invertible(lambda x: x * scale, lambda y: y / scale, pass_context=False)
    seq = rl.ReversibleSequence([layer])
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="neither a context tensor"):
        seq(x).sum().backward()
    # declared, the non-leaf passes its gradient on to the outer graph
    declared = rl.ReversibleSequence(
        [
            rl.Invertible(
                lambda x: x * scale, lambda y: y / scale, parameters=[scale], pass_context=False
            )
        ]
    )
    declared(x).sum().backward()
    torch.testing.assert_close(raw.grad, (x.detach() * scale.detach()).sum().reshape(()))


def test_module_in_context_receives_gradients() -> None:
    op = nn.Linear(3, 3, bias=False).double()

    x = torch.randn(5, 3, dtype=torch.float64)
    seq = rl.ReversibleSequence(
        [
            rl.InvertibleResidual(lambda x, m: 0.1 * torch.tanh(m(x)), lipschitz=None),
            rl.AdditiveCoupling(lambda x1, m: x1 @ m.weight[:2, :1], split=1, update="first"),
        ]
    )
    xr = x.clone().requires_grad_()
    seq(xr, op).square().sum().backward()
    g_rev = op.weight.grad.clone()  # type: ignore[union-attr]
    op.weight.grad = None
    seq.memory_saving = False
    seq(xr, op).square().sum().backward()
    assert rel(g_rev, op.weight.grad) <= 1e-10


# -- in-place reverse steps: what the engine may and may not overwrite -------------------------


class _Bias(nn.Module):
    """g(x1) = tanh(x1) + b with b shaped like the state's half: autograd hands dL/dy2 back as
    dL/db, a view of the engine's gradient buffer."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.randn(shape, dtype=torch.float64))

    def forward(self, x1: Tensor) -> Tensor:
        return torch.tanh(x1) + self.b


def test_gradients_aliasing_the_engines_buffers_survive_later_in_place_steps() -> None:
    b = nn.Parameter(torch.randn(1, 4, 4, 4, dtype=torch.float64))
    layers: list[rl.InvertibleModule] = [
        rl.AdditiveCoupling(_Bias((1, 2, 4, 4)), pass_context=False),
        rl.Invertible(lambda x: x + b, lambda y: y - b, parameters=[b], pass_context=False),
        rl.AdditiveCoupling(_Bias((1, 2, 4, 4)), pass_context=False, update="first"),
        rl.AffineCoupling(SmallNet(2, 4).double(), pass_context=False),
        rl.AdditiveCoupling(_Bias((1, 2, 4, 4)), pass_context=False),
    ]
    seq = rl.ReversibleSequence(layers)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    errors = compare_with_backprop(seq, x)
    assert max(errors.values()) <= 1e-10, errors
    b.grad = None
    seq(x).square().sum().backward()
    g_rev = b.grad.clone()  # type: ignore[union-attr]
    b.grad = None
    seq.memory_saving = False
    seq(x).square().sum().backward()
    assert rel(g_rev, b.grad) <= 1e-10


def test_engine_never_writes_into_input_output_gradient_or_context() -> None:
    identity = rl.Invertible(lambda x, c: x, lambda y, c: y, name="identity")
    layers: list[rl.InvertibleModule] = [
        identity,
        rl.AdditiveCoupling(SmallNet(2, 2, 1)),
        rl.AffineCoupling(SmallNet(2, 4, 1), update="first"),
        rl.IRIMBlock(4, hidden_channels=4, downsample=2),
        rl.AdditiveCoupling(SmallNet(2, 2, 1), update="first"),
        identity,
    ]
    for every in (None, 1, 2):
        seq = rl.ReversibleSequence(layers, checkpoint_every=every).double()
        x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
        c = torch.randn(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
        x_before, c_before = x.detach().clone(), c.detach().clone()
        y = seq(x, c)
        y_before = y.detach().clone()
        grad = torch.randn_like(y)
        grad_before = grad.clone()
        y.backward(grad, retain_graph=True)
        for now, before in ((x, x_before), (c, c_before), (y, y_before), (grad, grad_before)):
            assert torch.equal(now.detach(), before)
        first = x.grad.clone()  # type: ignore[union-attr]
        y.backward(grad)  # the saved states are intact: a second backward gives the same
        torch.testing.assert_close(x.grad, 2 * first, rtol=1e-12, atol=0)
        errors = compare_with_backprop(seq, x, c)
        assert max(errors.values()) <= 1e-10, errors


def test_forward_hooks_of_couplings_still_run() -> None:
    coupling = rl.AdditiveCoupling(SmallNet(2, 2), pass_context=False)
    calls: list[int] = []
    coupling.register_forward_hook(lambda module, args, out: calls.append(1))
    seq = rl.ReversibleSequence([rl.HouseholderConv(4), coupling, rl.HouseholderConv(4)])
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    seq(x).sum().backward()
    assert calls == [1]


class _Scaled(rl.InvertibleModule):
    """A user layer with its own reverse step written against the public protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x: Tensor, *context: object) -> Tensor:
        return x * self.scale

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        return y / self.scale

    def reverse_step(self, y: Tensor, grad_y: Tensor, step: rl.ReverseContext) -> rl.ReverseStep:
        with torch.no_grad():
            x = y / self.scale
            grads = [(self.scale, (grad_y * x).sum())]
            return rl.ReverseStep(x, grad_y * self.scale, grads)


def test_a_user_reverse_step_through_the_public_protocol() -> None:
    layers = [rl.HouseholderConv(4).double(), _Scaled(), rl.HouseholderConv(4).double()]
    seq = rl.ReversibleSequence(layers)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    errors = compare_with_backprop(seq, x)
    assert max(errors.values()) <= 1e-12, errors

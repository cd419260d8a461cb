"""``torch.compile``: every prior compiles (fullgraph where claimed) and matches eager; whole models
under ``torch.compile`` break their graphs cleanly at the physics, solvers and engines and give
eager's loss and gradients under every strategy; ``train(compile=True)``.

Compiled runs use inductor (a C compiler is on the test machines) for the networks and
``backend="aot_eager"`` for whole models: their graphs hold only the glue between the eager
physics, so aot_eager tests the graph breaks and autograd at a fraction of inductor's compile
time. Every test here compiles, so all are marked ``slow``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import revlayers
import unrolled
from conftest import make_sense
from unrolled.nn import ConvGRUCell, DnCNN, LUSERProx, build_prior

# the warnings torch 2.13 raises itself while compiling are ignored in the root pyproject.toml
pytestmark = pytest.mark.slow

# float32: inductor fuses and reorders sums, so compiled results differ from eager by rounding
# (measured up to 1.5e-5 relative to the largest entry)
RTOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    """``|a - b| <= rtol * max|b|`` (a tolerance relative to the tensor's scale)."""
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"


def _grads(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    xs = [x.clone().requires_grad_() for x in inputs]
    out = module(*xs)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    grads = [x.grad for x in xs] + [p.grad for p in module.parameters()]
    return [out.detach(), *[g for g in grads if g is not None]]


def _prior_cases() -> list[tuple[str, nn.Module, tuple[int, ...], bool]]:
    """(name, network, input channels and size, fullgraph), the same for the same seed."""
    torch.manual_seed(0)
    coupling = build_prior("coupling", 2, 8, 3)
    iresnet = build_prior("iresnet", 2, 8, 3)
    assert isinstance(coupling, list)
    assert isinstance(iresnet, list)
    return [
        ("resnet", build_prior("resnet", 2, 8, 3), (2, 2, 8, 8), True),
        ("resblocks", build_prior("resblocks", 2, 8), (2, 2, 8, 8), True),
        ("dncnn", build_prior("dncnn", 2, 8, 6), (2, 2, 8, 8), True),
        ("coupling", nn.ModuleList(coupling), (2, 2, 8, 8), True),
        ("iresnet", nn.ModuleList(iresnet), (2, 2, 8, 8), True),
        ("irim", revlayers.IRIMBlock(4, 8, 2), (2, 4, 8, 8), True),
        ("dncnn-sn", DnCNN(2, 8, 4, batchnorm=False, spectral_norm=True), (2, 2, 8, 8), False),
    ]


class _Chain(nn.Module):
    """Apply invertible layers in order (their networks are what gets compiled)."""

    def __init__(self, layers: nn.Module):
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers if isinstance(self.layers, nn.ModuleList) else [self.layers]:
            x = layer(x)
        return x


@pytest.mark.parametrize("case", range(7), ids=[c[0] for c in _prior_cases()])
def test_every_prior_compiles_and_matches_eager(case):
    name, net, shape, fullgraph = _prior_cases()[case]
    model = _Chain(net)
    # a twin, not a deep copy: a copied SpectralNorm runs one more power iteration
    eager = _Chain(_prior_cases()[case][1])
    assert unrolled.compile_networks(model, fullgraph=fullgraph), f"{name}: no network found"
    x = torch.randn(shape)
    got, want = _grads(model, (x,)), _grads(eager, (x,))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        _close(a, b)
    for a, b in zip(model.buffers(), eager.buffers()):  # BatchNorm statistics, power iteration
        _close(a.float(), b.float())


def test_compile_networks_finds_the_priors_not_the_physics():
    modl = unrolled.MoDL(iterations=2, features=4, couplings=2)
    assert unrolled.network_names(modl) == [
        f"stages.{s}.layers.{k}.g" for s in range(2) for k in range(2)
    ]
    resnet = unrolled.MoDL(iterations=2, prior="resnet", features=4, share_weights=True)
    assert unrolled.network_names(resnet) == ["stages.0.layers.0.net"]  # shared: once
    irim = unrolled.IRIM(steps=1, channels=8, blocks=2, hidden=8, downsampling=(1, 2))
    assert unrolled.network_names(irim) == [
        "stages.0.layers.1.coupling.g", "stages.0.layers.2.coupling.g"
    ]  # fmt: skip
    luser = unrolled.LUSER(iterations=1, features=8, groups=4)
    assert unrolled.network_names(luser) == [
        "stages.0.prox.injection", "stages.0.prox.data", "stages.0.prox.mixing"
    ]  # fmt: skip
    rim = unrolled.RIM(steps=2, hidden=8, features=8)
    assert unrolled.network_names(rim) == [
        f"stages.0.{name}" for name in ("conv1", "gru1", "conv2", "gru2", "conv3")
    ]
    # in place: parameters and state_dict keys unchanged, and a second call compiles nothing
    keys = list(modl.state_dict())
    names = unrolled.compile_networks(modl)
    assert list(modl.state_dict()) == keys
    forwards = [modl.get_submodule(n).__dict__["forward"] for n in names]
    unrolled.compile_networks(modl)
    assert [modl.get_submodule(n).__dict__["forward"] for n in names] == forwards


def test_spectral_norm_networks_compile_with_graph_breaks():
    """LUSER's block: the power iteration's weight-change test breaks the graph (not fullgraph)."""
    torch.manual_seed(0)
    prox = LUSERProx(2, features=8, groups=4)
    torch.manual_seed(0)
    eager = LUSERProx(2, features=8, groups=4)  # a twin: a copied SpectralNorm iterates again
    unrolled.compile_networks(prox, backend="aot_eager")
    r, u = torch.randn(1, 2, 8, 8), torch.randn(1, 8, 8, 8)
    got = _grads(_Mix(prox), (r, u))
    want = _grads(_Mix(eager), (r, u))
    for a, b in zip(got, want):
        _close(a, b)


class _Mix(nn.Module):
    def __init__(self, prox: LUSERProx):
        super().__init__()
        self.prox = prox

    def forward(self, r: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.prox.mix(r, u) + self.prox.inject(r).mean()


def test_gru_cell_compiles_fullgraph():
    cell = ConvGRUCell(2, 8)
    eager = copy.deepcopy(cell)
    unrolled.compile_networks(nn.ModuleList([cell]), fullgraph=True, backend="aot_eager")
    x, h = torch.randn(1, 2, 8, 8), torch.randn(1, 8, 8, 8)
    for a, b in zip(_grads(cell, (x, h)), _grads(eager, (x, h))):
        _close(a, b)


# --------------------------------------------------------------------------------------------
# whole models under torch.compile: clean graph breaks, eager's loss and gradients
# --------------------------------------------------------------------------------------------
def _model(name: str) -> unrolled.UnrolledModel:
    torch.manual_seed(0)
    if name == "MoDL":
        return unrolled.MoDL(iterations=2, features=8, layers=3, mu=1.0)
    if name == "IRIM":
        return unrolled.IRIM(steps=2, channels=8, blocks=2, hidden=8, downsampling=(1, 2))
    return unrolled.DEQ(features=8, depth=3, solver={"max_iter": 8, "on_failure": "ignore"})


def _loss_and_grads(model, loss_fn, y):
    model.zero_grad()
    loss = loss_fn(y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    ("name", "strategy"),
    [
        ("MoDL", "backprop"),
        ("MoDL", "checkpoint"),
        ("MoDL", "reversible"),
        ("IRIM", "checkpoint"),
        ("IRIM", "reversible"),
        ("DEQ", "implicit"),
    ],
)
@pytest.mark.parametrize("networks", [False, True], ids=["eager-networks", "compiled-networks"])
def test_compiled_model_gives_eager_loss_and_gradients(name, strategy, networks):
    """``torch.compile`` of the whole loss (not fullgraph), with and without compiled networks.

    Reversible and implicit run their engines eagerly (``torch.compiler.disable``), the compiled
    networks inside them included; gradients agree with eager to float32 rounding (1e-5
    relative: the reversible backward recomputes the networks inside the compiled region).
    """
    A, x, y = make_sense(size=16)
    model = _model(name).set_strategy(strategy)
    eager = _model(name).set_strategy(strategy)  # a twin: a copied SpectralNorm iterates again

    def loss_of(m):
        return lambda y: (m(y, A) - x).abs().square().mean()

    want_loss, want = _loss_and_grads(eager, loss_of(eager), y)
    if networks:
        unrolled.compile_networks(model, backend="aot_eager")
    compiled = torch.compile(loss_of(model), backend="aot_eager")
    got_loss, got = _loss_and_grads(model, compiled, y)
    _close(got_loss, want_loss)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        _close(a, b)


# --------------------------------------------------------------------------------------------
# train(compile=True)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["reversible", "greedy"])
def test_train_compile_matches_eager_training(strategy):
    data = unrolled.make_dataset("multicoil_mri", "train", image_size=16, num_coils=4)

    def run(compile: bool):
        torch.manual_seed(0)
        model = unrolled.MoDL(iterations=2, features=4, layers=3, mu=1.0)
        result = unrolled.train(
            model, data, strategy=strategy, steps=3, batch_size=2, progress=False, compile=compile
        )
        return model, result

    eager_model, eager = run(False)
    model, compiled = run(True)
    assert all("forward" in model.get_submodule(n).__dict__ for n in unrolled.network_names(model))
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        _close(p.detach(), q.detach(), 1e-5)


def test_train_compile_must_be_a_bool():
    data = unrolled.make_dataset("multicoil_mri", "train", image_size=16, num_coils=4)
    with pytest.raises(ValueError, match=r"compile must be true or false.*got 'yes'"):
        unrolled.train(unrolled.MoDL(iterations=1, features=4), data, steps=1, compile="yes")

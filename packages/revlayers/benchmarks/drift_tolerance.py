"""The measurements behind ``check_drift="auto"``'s tolerances (``revlayers.AUTO_TOLERANCE``).

Two questions, on the benchmark's two stacks (additive couplings with i-RIM's residual block,
and i-RIM blocks), state ``(1, C, S, S)``:

1. *How far do exact layers drift by themselves?* float32 and float64 stacks of depth 8-128
   with ``check_drift="auto"``: the largest checkpoint drift (rebuilt input against the stored
   input) over a few random inputs. The tolerance must sit well above it, or exact stacks would
   be recomputed for nothing.
2. *What gradient error does a drift of ``e`` cause?* A layer with an inverse that is off by a
   relative ``e`` (``Invertible(2x, y/2 + e ||y/2|| u, exact_inverse=False)``, ``u`` a fixed unit
   direction) is put at the top, or in the middle, of a float64 stack; without checks the
   gradients are compared with plain backprop. The ratio (gradient error) / ``e`` says which
   tolerance keeps the gradient error of an accepted reverse pass below 1e-3.

Part 2 puts the result in scale (float32 backprop against float64 backprop on the same
weights), part 4 measures the layer check of fixed-point inverses at their default tolerance.

    python packages/revlayers/benchmarks/drift_tolerance.py [--channels 16] [--size 32]
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import revlayers as rl


def stack(family: str, depth: int, channels: int, hidden: int) -> list[rl.InvertibleModule]:
    half = channels // 2
    if family == "irim":
        return [rl.IRIMBlock(channels, hidden, downsample=2) for _ in range(depth)]
    return [
        rl.AdditiveCoupling(
            rl.IRIMResidual(half, half, hidden, downsample=2),
            update="first" if i % 2 == 0 else "second",
            pass_context=False,
        )
        for i in range(depth)
    ]


def natural_drift(family: str, depth: int, dtype: torch.dtype, args: argparse.Namespace) -> float:
    """Largest drift the checks measure on an exact stack (a huge tolerance: never acts)."""
    torch.manual_seed(0)
    layers = stack(family, depth, args.channels, args.hidden)
    seq = rl.ReversibleSequence(layers, check_drift=1e30).to(dtype)
    worst = 0.0
    for trial in range(args.trials):
        gen = torch.Generator().manual_seed(trial)
        x = torch.randn(1, args.channels, args.size, args.size, generator=gen).to(dtype)
        seq(x.requires_grad_()).float().square().mean().backward()
        worst = max(worst, seq.diagnostics.max_drift)
    return worst


def _off_by(eps: float, shape: tuple[int, ...], exact: bool) -> rl.Invertible:
    u = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    u = u / u.norm()

    def inverse(y: torch.Tensor) -> torch.Tensor:
        x = y / 2
        return x + eps * x.norm() * u

    return rl.Invertible(lambda x: 2 * x, inverse, pass_context=False, exact_inverse=exact)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def gradient_error(
    family: str, depth: int, where: str, eps: float, args: argparse.Namespace
) -> tuple[float, float, float]:
    """(checkpoint drift at the input, input-gradient error, parameter-gradient error).

    The off-by-``e`` layer is declared exact here, so only the checkpoint check sees its error,
    after the layers below it have amplified it: the drift a stored state reports.
    """
    torch.manual_seed(0)
    shape = (1, args.channels, args.size, args.size)
    layers = stack(family, depth, args.channels, args.hidden)
    layers.insert(depth if where == "top" else depth // 2, _off_by(eps, shape, exact=True))
    seq = rl.ReversibleSequence(layers, check_drift=None).double()
    ref = copy.deepcopy(seq)
    ref.memory_saving = False
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for model in (seq, ref):
        xr = x.clone().requires_grad_()
        model.zero_grad()
        model(xr).square().mean().backward()
        params = torch.cat([p.grad.flatten() for p in model.parameters()])
        grads.append((xr.grad, params))
    # the drift the checkpoint check reports (rebuilt input against the stored one)
    probe = rl.ReversibleSequence(layers, check_drift="auto", on_drift="recompute").double()
    probe(x.clone().requires_grad_()).square().mean().backward()
    drift = probe.diagnostics.max_drift
    return drift, _relative(grads[0][0], grads[1][0]), _relative(grads[0][1], grads[1][1])


def _grads(model: rl.ReversibleSequence, x: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_()
    model.zero_grad()
    model(xr).square().mean().backward()
    return torch.cat([xr.grad.flatten(), *(p.grad.flatten() for p in model.parameters())])


def float32_floor(family: str, depth: int, args: argparse.Namespace) -> tuple[float, ...]:
    """Gradient errors against float64 backprop: float32 backprop, float32 reversible."""
    torch.manual_seed(0)
    seq = rl.ReversibleSequence(stack(family, depth, args.channels, args.hidden))
    x = torch.randn(
        1, args.channels, args.size, args.size, generator=torch.Generator().manual_seed(1)
    )
    ref64 = copy.deepcopy(seq).double()
    ref64.memory_saving = False
    ref32 = copy.deepcopy(seq)
    ref32.memory_saving = False
    g64 = _grads(ref64, x.double())
    g32 = _grads(ref32, x).double()
    rev = _grads(seq, x).double()
    return _relative(g32, g64), _relative(rev, g64), _relative(rev, g32), seq.diagnostics.max_drift


def part_drift(depths: list[int], args: argparse.Namespace) -> None:
    names = args.dtypes.split(",")
    dtypes = [getattr(torch, n) for n in names]
    print("1. Largest drift of exact stacks (over inputs, all checks)\n")
    print(f"| stack | depth | {' | '.join(names)} |\n|---|---|{'---|' * len(names)}")
    for family in ("additive", "irim"):
        for depth in depths:
            drifts = [natural_drift(family, depth, dtype, args) for dtype in dtypes]
            print(f"| {family} | {depth} | {' | '.join(f'{d:.1e}' for d in drifts)} |", flush=True)


def part_floor(depths: list[int], args: argparse.Namespace) -> None:
    print("\n2. The float32 floor: gradient errors (input and all parameters together)\n")
    print(
        "| stack | depth | f32 backprop vs f64 | f32 reversible vs f64 | f32 reversible vs f32 "
        "backprop | drift at the input |\n|---|---|---|---|---|---|"
    )
    for family in ("additive", "irim"):
        for depth in depths:
            a, b, c, d = float32_floor(family, depth, args)
            print(f"| {family} | {depth} | {a:.1e} | {b:.1e} | {c:.1e} | {d:.1e} |", flush=True)


def part_sensitivity(args: argparse.Namespace) -> None:
    print("\n3. Gradient error caused by one layer whose inverse is off by e (float64)\n")
    print(
        "| stack | depth | layer at | e | drift at the input | input grad err | param grad err "
        "| worst err / drift |\n|---|---|---|---|---|---|---|---|"
    )
    depth = args.sensitivity_depth
    for family in ("additive", "irim"):
        for where in ("top", "middle"):
            for eps in args.errors:
                drift, gx, gp = gradient_error(family, depth, where, eps, args)
                print(
                    f"| {family} | {depth} | {where} | {eps:.0e} | {drift:.1e} | {gx:.1e} "
                    f"| {gp:.1e} | {max(gx, gp) / drift:.2f} |",
                    flush=True,
                )


def part_fixed_point(args: argparse.Namespace) -> None:
    print("\n4. Layer-check residuals of fixed-point inverses (InvertibleResidual, default tol)\n")
    print("| Lip(g) | float32 | float64 |\n|---|---|---|")
    for lipschitz in (0.5, 0.9):
        drifts = []
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(0)
            layers = [
                rl.InvertibleResidual(
                    nn.Sequential(
                        nn.Conv2d(args.channels, 2 * args.hidden, 3, padding=1),
                        nn.ELU(),
                        nn.Conv2d(2 * args.hidden, args.channels, 3, padding=1),
                    ),
                    lipschitz=lipschitz,
                    pass_context=False,
                )
                for _ in range(8)
            ]
            seq = rl.ReversibleSequence(layers, on_drift="raise").to(dtype)
            worst = 0.0
            for trial in range(args.trials):
                gen = torch.Generator().manual_seed(trial)
                x = torch.randn(2, args.channels, args.size, args.size, generator=gen)
                seq(x.to(dtype).requires_grad_()).square().mean().backward()
                worst = max(worst, seq.diagnostics.max_drift)
            drifts.append(worst)
        print(f"| {lipschitz} | {drifts[0]:.1e} | {drifts[1]:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--depths", default="8,32,128")
    parser.add_argument("--sensitivity-depth", type=int, default=32)
    parser.add_argument(
        "--errors", default="1e-7,1e-6,1e-5,1e-4,1e-3", help="inverse errors e to inject"
    )
    parser.add_argument("--parts", default="1,2,3,4", help="which measurements to run")
    parser.add_argument("--dtypes", default="float64,float32,float16,bfloat16", help="part 1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    depths = [int(d) for d in args.depths.split(",")]
    args.errors = [float(e) for e in args.errors.split(",")]
    parts = args.parts.split(",")
    print(f"state (1, {args.channels}, {args.size}, {args.size}), hidden {args.hidden}\n")
    if "1" in parts:
        part_drift(depths, args)
    if "2" in parts:
        part_floor(depths, args)
    if "3" in parts:
        part_sensitivity(args)
    if "4" in parts:
        part_fixed_point(args)


if __name__ == "__main__":
    main()
